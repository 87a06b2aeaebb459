"""Bit-exact simulations of the weight quantisers trainers load base models with (bitsandbytes NF4).

Pure math on torch tensors: no I/O, nothing printed, and no bitsandbytes import.
"""
