"""The sd_cache stage (DiCLIP's TSA cache): single-class images drawn with Stable Diffusion, their masks from DiCLIP's
training-free CAMs, and the keys and values pooled from them (wsss_core/cam/diclip/cache.py), as one sealed directory:

  artifacts/sd_cache_<run>/
    images/<image_id>.png   the drawn images, at stored_size
    masks/<image_id>.png    their label maps (palette PNG, class index per pixel; DiCLIP's images/ + masks/ layout)
    images.parquet          image_id, class_id, word, prompt, seed, image_sha256, foreground (share of mask pixels)
    keys.parquet            class_id (0 background), key (E floats), value (one-hot over [background, classes])
    provenance.json         the run's params, both SD pipelines' and the CLIP's weight hashes, the seal

Both per-image phases run on the engine (wsss_core/engine), one image at a time, and keep every finished image in a
scratch directory keyed by the run's params, the checkpoints and the code: a killed run resumes where it stopped, and
the directory moves into place only when complete. Image j is drawn from seed + j on a CPU generator, so the same
inputs give the same bytes on one device kind (and, on CPU, thread count), whichever engine or order computed them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss_core.engine import open_engine
from wsss_core.provenance import dumps, make_provenance

IMAGES_DIR, MASKS_DIR, REGIONS_DIR = "images", "masks", "regions"


@dataclass(frozen=True)
class DrawJob:
    """Draws images with the SD pipeline in `generator`: an item is (prompt, seed), a result the PNG bytes."""

    generator: str
    steps: int
    guidance_scale: float
    size: int
    stored_size: int

    def build(self, device: str) -> _Drawer:
        from wsss_core.models.diffusion import load_sd_pipeline

        return _Drawer(self, load_sd_pipeline(self.generator, device=device))


class _Drawer:
    def __init__(self, job: DrawJob, handle) -> None:
        self.job, self.handle = job, handle
        self.details = {"generator": handle.provenance}

    def __call__(self, item: tuple[str, int]) -> bytes:
        from PIL import Image

        from wsss_core.models.diffusion import generate_images

        prompt, seed = item
        job = self.job
        (image,) = generate_images(
            self.handle,
            [prompt],
            [seed],
            steps=job.steps,
            guidance_scale=job.guidance_scale,
            height=job.size,
            width=job.size,
            batch_size=1,
        )
        picture = Image.fromarray(image)
        if job.stored_size != job.size:
            picture = picture.resize((job.stored_size, job.stored_size), Image.LANCZOS)
        return png_bytes(picture)


@dataclass(frozen=True)
class MaskJob:
    """Labels drawn images with DiCLIP's training-free CAMs (no retrieval: the cache does not exist yet): an item is
    (image, class id), a result (palette PNG bytes of the label map, its foreground share, (2, E) region keys)."""

    masks: dict[str, Any]
    clip_params: dict[str, Any]
    diffusion: str
    class_names: tuple[str, ...]

    def build(self, device: str) -> _Masker:
        from wsss_core.cam.diclip.cams import DiclipCams
        from wsss_core.cam.methods.diclip import diclip_settings
        from wsss_core.models.diffusion import load_sd_pipeline
        from wsss_core.models.loading import clip_from_params
        from wsss_core.prompts.vocabulary import run_prompts

        clip = clip_from_params(self.clip_params, device)
        sd = load_sd_pipeline(self.diffusion, device=clip.device)
        masks = self.masks
        generator = DiclipCams(
            clip,
            sd,
            *run_prompts(masks, self.class_names, "masks"),
            None,
            diclip_settings(masks, retrieval_weight=0.0, store_resolution="image"),
        )
        return _Masker(generator, {"clip": clip.provenance, "vce": sd.provenance})


class _Masker:
    def __init__(self, generator, details: dict[str, Any]) -> None:
        self.generator, self.details = generator, details

    def __call__(self, item: tuple[np.ndarray, int]) -> tuple[bytes, float, np.ndarray]:
        from wsss_core.cam.diclip.cache import region_keys

        image, class_id = item
        result = self.generator(image, [class_id])
        # DiCLIP's label: argmax over [1 - max of the classes, the classes], the background winning ties
        labels = np.where(result.cams[0].numpy() > 1 - result.cams[0].numpy(), class_id, 0).astype(np.uint8)
        return label_png(labels), float((labels > 0).mean()), region_keys(result.features, labels, result.grid)


def png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def label_png(labels: np.ndarray) -> bytes:
    from PIL import Image

    from wsss_core.data.voc import voc_palette

    picture = Image.fromarray(labels, mode="P")
    picture.putpalette(voc_palette())
    return png_bytes(picture)


def build_sd_cache(name: str, index_path: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Run `sd_cache.runs.<name>` and write `out`; returns figures for the run log."""
    from wsss_core.cam.diclip.cache import KEYS_TABLE, cache_plan, cluster_keys, write_keys
    from wsss_core.data.base import read_image
    from wsss_core.data.index import read_index
    from wsss_core.hashing import sha256_file
    from wsss_core.prompts.vocabulary import class_words
    from wsss_core.store.atomic import atomic_file, replace_directory
    from wsss_core.store.scratch import resumable_work
    from wsss_core.store.seal import seal_directory
    from wsss_core.store.table import write_table

    key = f"sd_cache.runs.{name}"
    run, clip_params = params["sd_cache"]["runs"][name], params["models"]["clip"]
    device, engine = params["sd_cache"]["device"], params["engine"]
    class_names = tuple(read_index(index_path).class_names)
    words = class_words(run["class_words"], class_names, f"{key}.class_words")
    plan = cache_plan(
        words, run["images_per_class"], template=run["prompt"], overrides=run["prompt_overrides"], seed=run["seed"]
    )
    image_ids = [entry.image_id for entry in plan]

    # Resumed only with the same params, index, code and weight files (by size and time: hashing them is slow)
    weights = [run["generator"], run["diffusion"], clip_params["checkpoint"]]
    material = {
        "run": run,
        "clip": clip_params,
        "index": sha256_file(index_path),
        "weights": {str(path): _file_stats(path) for path in weights if path is not None},
    }
    with resumable_work(out, material) as work:
        building = work / out.name
        for folder in (IMAGES_DIR, MASKS_DIR):
            (building / folder).mkdir(parents=True, exist_ok=True)
        (work / REGIONS_DIR).mkdir(exist_ok=True)

        def missing(folder: str) -> list[int]:
            done = {path.stem for path in (building / folder).glob("*.png")}
            return [i for i, image_id in enumerate(image_ids) if image_id not in done]

        def save(path: Path, data: bytes) -> None:
            with atomic_file(path) as handle:
                handle.write(data)

        draw = DrawJob(run["generator"], run["steps"], run["guidance_scale"], run["size"], run["stored_size"])
        with open_engine(engine, draw, device, f"sd_cache_{name} images") as running:
            generator_record = running.details["generator"]
            running.run(
                missing(IMAGES_DIR),
                lambda i: (plan[i].prompt, plan[i].seed),
                lambda i, png: save(building / IMAGES_DIR / f"{image_ids[i]}.png", png),
                image_ids,
            )

        def write_mask(i: int, result: tuple[bytes, float, np.ndarray]) -> None:
            png, share, regions = result
            with atomic_file(work / REGIONS_DIR / f"{image_ids[i]}.npz") as handle:
                np.savez(handle, regions=regions, foreground=share)
            save(building / MASKS_DIR / f"{image_ids[i]}.png", png)  # last: a mask file means the image is done

        label = MaskJob(run["masks"], clip_params, run["diffusion"], class_names)
        with open_engine(engine, label, device, f"sd_cache_{name} masks") as running:
            mask_details = running.details
            running.run(
                missing(MASKS_DIR),
                lambda i: (read_image(building / IMAGES_DIR / f"{image_ids[i]}.png"), plan[i].class_id),
                write_mask,
                image_ids,
            )

        regions, foreground = [], {}
        for i, image_id in enumerate(image_ids):
            with np.load(work / REGIONS_DIR / f"{image_id}.npz") as saved:
                regions.append(saved["regions"])
                foreground[i] = float(saved["foreground"])
        cache = cluster_keys(
            np.stack(regions),
            [entry.class_id for entry in plan],
            len(class_names) - 1,
            clusters=run["clusters"],
            background_clusters=run["background_clusters"],
            random_state=run["random_state"],
            n_init=run["n_init"],
            key=key,
        )
        provenance = make_provenance(
            f"sd_cache_{name}",
            {key: run, "models.clip": clip_params},
            upstream={"index": index_path},
            checkpoints={"generator": generator_record, **mask_details},
            libraries=("diffusers", "open_clip_torch", "scikit-learn"),
            details={"class_names": list(class_names), "images": len(plan), "keys": int(len(cache.keys))},
        )
        write_table(building / "images.parquet", _images_table(plan, building, foreground), provenance)
        write_keys(building / KEYS_TABLE, cache, provenance)
        (building / "provenance.json").write_text(dumps(provenance))
        seal_directory(building)
        replace_directory(building, out)
    empty = sum(1 for share in foreground.values() if share == 0)
    return {"images": len(plan), "keys": int(len(cache.keys)), "images_without_foreground": empty}


def _images_table(plan, building: Path, foreground: dict[int, float]):
    import pyarrow as pa

    from wsss_core.hashing import sha256_file

    return pa.table(
        {
            "image_id": [entry.image_id for entry in plan],
            "class_id": pa.array([entry.class_id for entry in plan], pa.int16()),
            "word": [entry.word for entry in plan],
            "prompt": [entry.prompt for entry in plan],
            "seed": pa.array([entry.seed for entry in plan], pa.int64()),
            "image_sha256": [sha256_file(building / IMAGES_DIR / f"{entry.image_id}.png") for entry in plan],
            "foreground": pa.array([foreground[i] for i in range(len(plan))], pa.float32()),
        }
    )


def _file_stats(path: str) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file under `path` (or of the file): a cheap change detector."""
    root = Path(path)
    files = sorted(root.rglob("*")) if root.is_dir() else [root]
    return [(f.relative_to(root).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
