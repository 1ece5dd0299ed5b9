"""Refiners: functions that sharpen score maps (CAMs, seeds' class scores) against the image, callable by any method.

- `par.par_refine`: PAR, pixel-adaptive refinement (AFA; the copies in WeCLIP and ExCEL), a fixed local random walk
  whose weights come from colour similarity at several dilations.
"""
