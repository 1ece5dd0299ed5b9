"""DiCLIP (Yang et al.): Stable Diffusion's self-attention brought into a frozen CLIP's CAMs.

One module per component:
  acr.py        ACR: the SD attention map VCE captures (raw q k^T of one UNet self-attention layer, resized to CLIP's
                grid) thresholded, two heads chained, its tokens clustered by symmetric KL around grid anchors and
                averaged within each cluster; the result is added to the patch attention of CLIP's last blocks.
  recursive.py  the recursive refinement of present-class CAMs by another SD layer's attention probabilities, which
                DiCLIP uses for its training labels.
The SD side (the UNet pass, the attention capture) is wsss_core/models/diffusion.py.
"""
