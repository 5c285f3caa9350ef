"""What ``bnlab bench`` measures: one frozen configuration, three presets."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError, check

__all__ = ["BenchConfig", "PRESETS", "SECTIONS", "parse_shapes", "shape_label"]

# The shapes of the speed targets: NCHW / (N, C) shapes, then channels_last ones ("cl").
TARGET_SHAPES = ("32x64x56x56,64x256x14x14,64x64x112x112,32x512x7x7,8x2048x7x7,256x1024,1024x256,"
                 "32x64x56x56cl,64x256x14x14cl,128x64x32x32cl")
SECTIONS = ("layers", "fixed_malloc", "thp_alloc", "per_call", "fused", "memory", "batch1", "end_to_end")


def parse_shapes(text: str) -> list[tuple[tuple[int, ...], bool]]:
    """``"32x64x56x56cl,256x1024"`` → ``[((32, 64, 56, 56), True), ((256, 1024), False)]``."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        cl = item.endswith("cl")
        try:
            shape = tuple(int(d) for d in item[:-2 if cl else None].split("x"))
        except ValueError:
            raise ConfigError(f"bad shape {item!r}: expected NxC[xHxW...], e.g. 32x64x56x56 or 32x64x56x56cl") from None
        check(2 <= len(shape) <= 5 and all(d > 0 for d in shape), f"bad shape {item!r}: 2 to 5 positive sizes")
        check(not cl or len(shape) in (4, 5), f"bad shape {item!r}: channels_last ('cl') needs 4 or 5 sizes")
        out.append((shape, cl))
    check(bool(out), "no shapes given: pass --shapes like 32x64x56x56,256x1024")
    return out


def shape_label(shape, cl: bool) -> str:
    """``(32, 64, 56, 56), True`` → ``"32x64x56x56 CL"``."""
    return "x".join(map(str, shape)) + (" CL" if cl else "")


@dataclass(frozen=True)
class BenchConfig:
    """The benchmark of bnlab's BatchNorm layers against ``torch.nn.BatchNorm*d``."""

    shapes: str = field(default=TARGET_SHAPES, metadata={
        "help": "comma-separated NxC[xHxW...] input shapes; suffix 'cl' = channels_last"})
    sections: tuple[str, ...] = field(default=SECTIONS, metadata={"help": f"subset of {SECTIONS}"})
    reps: int = field(default=9, metadata={"help": "timed rounds per shape and mode (each runs every peer)"})
    warmup: int = field(default=2, metadata={"help": "untimed rounds first"})
    e2e_reps: int = field(default=5, metadata={"help": "timed rounds of the batch-1 and SGD-step networks"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    tiny_calls: int = field(default=200, metadata={"help": "calls per sample of the per-call (4,16,4,4) timing"})
    mmap_threshold: int = field(default=32 * 1024 * 1024, metadata={
        "help": "bytes for MALLOC_MMAP_THRESHOLD_ in the fixed-allocator run (glibc caps it at 32 MiB)"})
    resnet_batch: int = field(default=8, metadata={"help": "batch of the ResNet-18-style SGD step"})
    resnet_size: int = field(default=32, metadata={"help": "image side of the ResNet-18-style SGD step"})
    resnet_width: int = field(default=64, metadata={"help": "channels of the first ResNet stage (ResNet-18: 64)"})
    smoke: bool = field(default=False, metadata={"help": "label the output as a smoke run (not for citing)"})
    plot: bool = field(default=True, metadata={"help": "write speedup.png"})

    def __post_init__(self):
        bad = sorted(set(self.sections) - set(SECTIONS))
        check(not bad, f"unknown section(s) {bad}; choose among {', '.join(SECTIONS)}")
        check(self.reps >= 2 and self.e2e_reps >= 2,
              f"reps and e2e_reps must be >= 2 (a spread needs two samples), got {self.reps}, {self.e2e_reps}")
        check(self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}")
        check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        check(self.tiny_calls >= 1, f"tiny_calls must be >= 1, got {self.tiny_calls}")
        check(self.mmap_threshold > 0, f"mmap_threshold must be > 0 bytes, got {self.mmap_threshold}")
        check(self.resnet_batch >= 2 and self.resnet_size >= 8 and self.resnet_width >= 4,
              "the ResNet step needs resnet_batch >= 2, resnet_size >= 8, resnet_width >= 4")
        parse_shapes(self.shapes)


PRESETS = {
    "full": BenchConfig(),
    "quick": BenchConfig(shapes="32x64x28x28,64x256x7x7,256x1024,32x64x28x28cl", reps=5, warmup=1, e2e_reps=3,
                         tiny_calls=50, resnet_batch=4, resnet_size=16, resnet_width=16, smoke=True),
    "tiny": BenchConfig(shapes="4x3x5x5,4x3x5x5cl,16x6", reps=2, warmup=1, e2e_reps=2, tiny_calls=3,
                        resnet_batch=2, resnet_size=8, resnet_width=4, smoke=True, plot=True),
}
