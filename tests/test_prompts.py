"""Prompt vocabulary and learnable context prompts, on a tiny random-weight CLIP of open_clip's classes."""

from __future__ import annotations

import pytest
import torch

from wsss_core.models.clip import ClipModel, load_clip
from wsss_core.models.clip_text import encode_text
from wsss_core.prompts import (
    CLIP_ES_BACKGROUND_COCO,
    CLIP_ES_BACKGROUND_VOC,
    CLIP_ES_COCO_NAMES,
    CLIP_ES_TEMPLATE,
    CLIP_ES_VOC_NAMES,
    prompts_for,
)
from wsss_core.prompts.context import ContextPromptEncoder

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


@pytest.fixture(scope="module")
def clip() -> ClipModel:
    return load_clip("tiny", model_cfg=TINY_CFG, random_init=True, device="cpu")


def word_embeddings(clip: ClipModel, phrase: str) -> torch.Tensor:
    """Token embeddings (n, D) of a phrase's words, without start and end tokens."""
    ids = torch.tensor(clip.tokenizer.encode(phrase))
    with torch.no_grad():
        return clip.model.token_embedding(ids)


# ---------------------------------------------------------------------------------------------------- vocabulary


def test_vocabulary_sizes_and_distinct_entries():
    assert len(CLIP_ES_VOC_NAMES) == 20 and len(set(CLIP_ES_VOC_NAMES)) == 20
    assert len(CLIP_ES_COCO_NAMES) == 80 and len(set(CLIP_ES_COCO_NAMES)) == 80
    assert len(CLIP_ES_BACKGROUND_VOC) == 25 and len(set(CLIP_ES_BACKGROUND_VOC)) == 25
    assert len(CLIP_ES_BACKGROUND_COCO) == 23


def test_vocabulary_synonyms_sit_at_their_class_index():
    # VOC class ids: 3 bird, 9 chair, 15 person, 20 tvmonitor (entry i is class i + 1)
    assert CLIP_ES_VOC_NAMES[2] == "bird avian"
    assert CLIP_ES_VOC_NAMES[8] == "chair seat"
    assert CLIP_ES_VOC_NAMES[14] == "person with clothes,people,human"
    assert CLIP_ES_VOC_NAMES[19] == "tvmonitor screen"
    assert CLIP_ES_COCO_NAMES[0] == "person with clothes,people,human"
    assert CLIP_ES_COCO_NAMES[79] == "toothbrush"


def test_coco_background_drops_keyboard_and_sign_only():
    dropped = [word for word in CLIP_ES_BACKGROUND_VOC if word not in CLIP_ES_BACKGROUND_COCO]
    assert dropped == ["keyboard", "sign"]
    kept_in_order = [word for word in CLIP_ES_BACKGROUND_VOC if word in CLIP_ES_BACKGROUND_COCO]
    assert kept_in_order == list(CLIP_ES_BACKGROUND_COCO)


def test_prompts_for_fills_the_template():
    assert CLIP_ES_TEMPLATE == "a clean origami {}."
    assert prompts_for(["cat", "chair seat"]) == ["a clean origami cat.", "a clean origami chair seat."]
    assert prompts_for(["sky"], "a photo of {} {{literal}}") == ["a photo of sky {{literal}}"]
    with pytest.raises(ValueError, match="placeholder"):
        prompts_for(["cat"], "no slot here")
    with pytest.raises(ValueError, match="non-empty"):
        prompts_for(["cat", ""])


# ------------------------------------------------------------------------------------------------ context prompts


def test_unified_context_with_real_word_embeddings_reproduces_encode_text(clip):
    encoder = ContextPromptEncoder(clip, ["cat", "person with clothes,people,human"], n_ctx=4, layout="unified_end")
    phrase = word_embeddings(clip, "a photo of a")
    assert phrase.shape[0] == 4
    with torch.no_grad():
        encoder.context.copy_(phrase)
        spliced = encoder()
    reference = encode_text(clip, ["a photo of a cat.", "a photo of a person with clothes,people,human."])
    assert torch.allclose(spliced, reference, atol=1e-5)


def test_class_front_context_follows_each_name(clip):
    encoder = ContextPromptEncoder(clip, ["bird avian", "dog"], n_ctx=2, layout="class_front")
    assert encoder.context.shape == (2, 2, 64)
    with torch.no_grad():
        encoder.context[0].copy_(word_embeddings(clip, "on grass"))
        encoder.context[1].copy_(word_embeddings(clip, "in water"))
        spliced = encoder()
    reference = encode_text(clip, ["bird avian on grass.", "dog in water."])
    assert torch.allclose(spliced, reference, atol=1e-5)


def test_context_only_prompts_have_no_words(clip):
    encoder = ContextPromptEncoder(clip, [], n_ctx=2, layout="context_only", n_prompts=3)
    assert encoder.num_prompts == 3
    phrases = ["blue sky", "green grass", "in water"]
    with torch.no_grad():
        for index, phrase in enumerate(phrases):
            encoder.context[index].copy_(word_embeddings(clip, phrase))
        spliced = encoder()
    reference = encode_text(clip, [phrase + "." for phrase in phrases])
    assert torch.allclose(spliced, reference, atol=1e-5)


def test_random_context_gives_other_embeddings_than_words(clip):
    encoder = ContextPromptEncoder(clip, ["cat"], n_ctx=4, layout="unified_end")
    reference = encode_text(clip, ["a photo of a cat."])
    with torch.no_grad():
        random_context = encoder()
    assert (random_context - reference).abs().max() > 1e-3


def test_only_the_context_learns_and_clip_stays_bit_identical(clip):
    encoder = ContextPromptEncoder(clip, ["cat", "dog"], n_ctx=3, layout="class_front")
    assert [name for name, _ in encoder.named_parameters()] == ["context"]
    assert list(encoder.state_dict()) == ["context"]
    clip_before = {key: value.clone() for key, value in clip.model.state_dict().items()}
    before = encoder().detach()

    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    embeddings = encoder()
    loss = -(embeddings[0] @ embeddings[1])  # pull the two prompts together
    loss.backward()
    assert encoder.context.grad is not None and encoder.context.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in clip.model.parameters())
    optimizer.step()

    for key, value in clip.model.state_dict().items():
        assert torch.equal(value, clip_before[key]), key
    after = encoder().detach()
    assert (after - before).abs().max() > 1e-4
    assert (after[0] @ after[1]) > (before[0] @ before[1])


def test_context_initialisation_is_seeded_normal(clip):
    first = ContextPromptEncoder(clip, ["cat"], n_ctx=16, init_std=0.015, seed=5)
    second = ContextPromptEncoder(clip, ["cat"], n_ctx=16, init_std=0.015, seed=5)
    other = ContextPromptEncoder(clip, ["cat"], n_ctx=16, init_std=0.015, seed=6)
    assert first.context.shape == (16, 64)
    assert torch.equal(first.context, second.context)
    assert not torch.equal(first.context, other.context)
    # 1,024 draws: the sample standard deviation is within a few percent of 0.015
    assert abs(first.context.std().item() - 0.015) < 0.0015
    assert first.context.dtype == torch.float32


def test_context_encoder_rejects_bad_arguments(clip):
    with pytest.raises(ValueError, match="unknown layout"):
        ContextPromptEncoder(clip, ["cat"], layout="middle")
    with pytest.raises(ValueError, match="n_prompts"):
        ContextPromptEncoder(clip, [], layout="context_only")
    with pytest.raises(ValueError, match="n_prompts applies"):
        ContextPromptEncoder(clip, ["cat"], layout="unified_end", n_prompts=3)
    with pytest.raises(ValueError, match="non-empty class names"):
        ContextPromptEncoder(clip, ["cat", ""], layout="class_front")
    with pytest.raises(ValueError, match="more than CLIP's context of 77"):
        ContextPromptEncoder(clip, ["cat"], n_ctx=80)
