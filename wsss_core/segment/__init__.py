"""Retraining: a segmentation network trained on seed labels, its inference and post-processing.

networks.py   the registry (NETWORKS) of trainable networks: weclip_head.py (WeCLIP head on a frozen CLIP),
              deeplabv3plus.py (DeepLabV3+ on a torchvision ResNet), weaktr_decoder.py (ViT + mask transformer)
losses.py     CE with ignore 255, the bg/fg-balanced CE, WeakTr's gradient-clipping loss
train.py      schedule, augmentation, optimiser, checkpoints and exact resume
infer.py      multi-scale + flip, sliding-window class scores (ExCEL's square views and logit averaging too)
postprocess.py  none | dense CRF | SAMS
The retrain and predict stages' work (artifacts and provenance) is in wsss_core/drivers/{retrain,predict}.py.

Import-light on purpose: torch and the model libraries load only with the submodule that needs them.
"""
