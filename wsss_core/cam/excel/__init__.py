"""ExCEL (Yang et al., CVPR 2025), training-free: CAMs from patch-text alignment on a frozen CLIP.

One module per component:
  attributes.py  TSE, text semantic enrichment: each class's text embedding plus a softmax-weighted sum of the
                 attribute bank's entries (KMeans centres of LLM class descriptions), background words appended.
  svc.py         SVC, static visual calibration: a second path through the last CLIP blocks whose attention is the
                 intra-correlation of q, k and v (q-q, k-k, v-v) in place of q-k, without the FFN.
  surgery.py     the CAM itself: CLIP Surgery's feature surgery between the calibrated patch tokens and the texts.
  cams.py        the generator: preprocessing as ExCEL's scripts, views, CAA, background and optional PAR.
The method entry (settings, reading the bank) is wsss_core/cam/methods/excel.py.
"""
