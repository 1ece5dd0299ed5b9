"""DiCLIP (Yang et al.): Stable Diffusion's self-attention brought into a frozen CLIP's CAMs.

One module per component:
  acr.py        ACR: the SD attention map VCE captures (raw q k^T of one UNet self-attention layer, resized to CLIP's
                grid) thresholded, two heads chained, its tokens clustered by symmetric KL around grid anchors and
                averaged within each cluster.
  fusion.py     the map of CLIP Surgery's new path in CLIP's last 3 blocks, q-q plus twice k-k attention with ACR's
                affinity added to the patch block (run by wsss_core/cam/excel/svc.py's dual path).
  retrieval.py  TSA's static retrieval from the SD key-value cache (keys by feature surgery, values weighted by their
                class text), and the weighted fusion of an extra map into a CAM.
  recursive.py  the recursive refinement of present-class CAMs by another SD layer's attention probabilities, which
                DiCLIP uses for its training labels.
The SD side (the UNet pass, the attention capture) is wsss_core/models/diffusion.py.
"""
