"""CAM networks: classification networks trained end to end on the image-level labels whose own attention and
features give the CAMs (WeakTr), with no CLIP. Two stage families use them: `cam_net@<run>` trains one
(`cam_nets.runs.<run>` -> artifacts/camnet_<run>/, wsss_core/drivers/cam_nets.py) and `net_cams@<name>` computes its
CAMs (`cam_nets.cams.<name>` -> artifacts/cams_<name>.zarr, the artifact every CAM method writes, so the seed,
SAMS and evaluation stages read them like any other). They are families of their own, not entries of `cams.runs`,
because a DVC stage's dependencies are fixed per family and the cams family depends on the CLIP checkpoint.

`CAM_NETS` is the registry `method` picks from. Every method module has:
  SETTINGS: Schema        its training run keys
  CAM_SETTINGS: Schema    its CAM keys (a `cam_nets.cams` entry)
  build_network(run, num_classes, *, pretrained) -> Built   (network, mean, std, checkpoints)
  fit(run, dataset, *, device, work_dir, checkpoint_every, on_step) -> (Built, curve)
  cam_generator(built, settings, device) -> callable(image, class_ids) -> (ids, maps at image size)
  LOSS_COLUMNS            the loss columns of its curve
One module per component: aaf.py, weaktr_network.py, weaktr_training.py, weaktr_cams.py; artifact.py writes and
reads artifacts/camnet_<run>/.
"""

from __future__ import annotations

from wsss_core.camnet import weaktr

CAM_NETS = {
    "weaktr": weaktr,
}
