"""The bnlab lab: experiments that reproduce the claims of Ioffe & Szegedy (2015).

Imports go one way: the lab imports the library; ``import bnlab`` never imports the lab.
"""
