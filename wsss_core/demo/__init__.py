"""The embedded demo: a small CLIP pretrained on the synthetic domain (`pretrain`) and the demo report (`report`).

Both modules are imported on their own: `pretrain` loads torch and open_clip, `report` loads matplotlib.
"""
