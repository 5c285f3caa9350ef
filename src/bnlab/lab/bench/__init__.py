"""``bnlab bench``: bnlab's BatchNorm against PyTorch's on this CPU, every target in one run.

Sections (each a module here): ``layers`` — training forward+backward and eval per
shape, bnlab vs ``torch.nn.BatchNorm*d``, interleaved, with bytes moved against the
copy bandwidth of the same run and page faults per step; ``fixed_malloc`` — the same
in a child process with glibc's mmap threshold fixed, and ``thp_alloc`` — the same with
torch's allocator on transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``), so allocation
cost and kernel speed are told apart, above glibc's 32 MiB cap too; ``per_call`` — µs per call on a tiny input; ``fused`` —
``BatchNormAct`` vs torch's BN followed by the activation (and In-Place ABN);
``memory`` — activation memory saved for backward; ``batch1`` — batch-1 inference
latency of a 20-BN network; ``end_to_end`` — a ResNet-18-style SGD step, with the
ceiling BN at zero cost would give.

Writes ``config.json``, ``results.json``, ``table.md`` and ``speedup.png`` into the
run folder and prints the table. The load average before and after is recorded and
the report says when the machine was too busy to trust the numbers.
"""
from .config import PRESETS, SECTIONS, BenchConfig, parse_shapes
from .cli import main, run

__all__ = ["BenchConfig", "PRESETS", "SECTIONS", "parse_shapes", "run", "main"]
