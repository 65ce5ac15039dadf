"""The knee framing (issue 17, lever 2): one square per knee, centred on the joint line, applied the
same way by training (a view per knee), evaluation and the torch-free runtime (logits averaged)."""
from __future__ import annotations

import numpy as np
import pytest

from osteo_edge.framing import knee_boxes
from osteo_edge.preprocess import PreprocessSpec, decode_image, frames, resize, to_gray


def leg(h: int, w: int, joint: int) -> np.ndarray:
    """A synthetic knee: a soft-tissue band, bone shafts widening into condyles and plateau, with a
    dark joint space at row ``joint``."""
    img = np.full((h, w), 0.05, np.float32)
    cx = w // 2
    img[:, cx - w // 3 : cx + w // 3] = 0.25
    for y in range(h):
        half = int(w * (0.08 + 0.14 * np.exp(-((y - joint) / (0.12 * h)) ** 2)))
        img[y, cx - half : cx + half] = 0.8
    img[joint - 3 : joint + 4, cx - w // 4 : cx + w // 4] = 0.3
    return img


@pytest.mark.parametrize("joint_frac", [0.35, 0.5, 0.65])
def test_single_tall_knee_one_box_on_the_joint(joint_frac):
    h, w = 400, 200
    g = leg(h, w, int(joint_frac * h))
    (b,) = knee_boxes(g)
    assert 0 <= b.left and b.left + b.side <= w and 0 <= b.top and b.top + b.side <= h
    assert abs((b.top + b.side / 2) - joint_frac * h) < 0.1 * h


def test_bilateral_film_is_split_into_two_knees_at_one_height():
    h = 300
    g = np.concatenate([leg(h, 160, 140), np.full((h, 30), 0.05, np.float32), leg(h, 160, 150)], axis=1)
    boxes = knee_boxes(g)
    assert len(boxes) == 2
    left, right = boxes
    assert left.left + left.side / 2 < 175 < right.left + right.side / 2
    assert left.top == right.top  # one joint row for both knees of a film
    assert abs(left.top + left.side / 2 - 145) < 0.1 * h


def test_a_dark_half_is_not_a_second_knee():
    g = np.concatenate([leg(300, 160, 150), np.full((300, 200), 0.05, np.float32)], axis=1)
    assert len(knee_boxes(g)) == 1


@pytest.mark.parametrize("shape", [(1, 1), (5, 300), (300, 5), (64, 64)])
def test_unparseable_films_still_give_one_box_inside(shape):
    for g in (np.zeros(shape, np.float32), np.ones(shape, np.float32), np.random.default_rng(0).random(shape, dtype=np.float32)):
        boxes = knee_boxes(g)
        assert boxes and all(b.side >= 1 and b.left + b.side <= shape[1] and b.top + b.side <= shape[0] for b in boxes)


def test_frames_give_one_input_per_knee_and_other_policies_one():
    g = np.concatenate([leg(300, 160, 140), np.full((300, 30), 0.05, np.float32), leg(300, 160, 140)], axis=1)
    knee = PreprocessSpec(input_size=64, resize="knee")
    views = frames(g, knee)
    assert len(views) == 2 and all(v.shape == (64, 64) for v in views)
    assert np.array_equal(resize(g, knee), views[0]) and np.array_equal(resize(g, knee, view=1), views[1])
    assert len(frames(g, PreprocessSpec(input_size=64))) == 1
    assert PreprocessSpec.from_json(knee.to_json()) == knee


def test_real_films_framed_per_source(shared_data):
    """Wani films (mostly both knees) give two views more often than not; the Kaggle sources' tall
    single-knee films give one; every box lies inside its film."""
    def views(src: str) -> list[int]:
        files = sorted(p for p in (shared_data / "knee" / src).glob("*/*") if p.is_file())[::25][:12]
        out = []
        for f in files:
            g = to_gray(decode_image(f))
            boxes = knee_boxes(g)
            assert all(b.left + b.side <= g.shape[1] and b.top + b.side <= g.shape[0] for b in boxes)
            out.append(len(boxes))
        return out

    wani, kaggle = views("wani-mendeley"), views("2class-kaggle")
    assert sum(n == 2 for n in wani) > len(wani) / 2
    assert sum(n == 1 for n in kaggle) > 0.8 * len(kaggle)


def test_runtime_answers_a_bilateral_film_from_both_knees(tmp_path):
    """The torch-free runtime runs every view and answers softmax(mean logits / T): the same rule as
    training's evaluation (modeling.inference.predict_logits)."""
    from osteo_edge.core.stats import softmax
    from osteo_edge.edge_runtime import EdgeClassifier
    from osteo_edge.preprocess import DecodedImage, finalize
    from test_runtime_fixtures import make_onnx_bundle

    clf = EdgeClassifier.load(make_onnx_bundle(tmp_path / "b", resize="knee", temperature=1.7), threads=1)
    g = np.concatenate([leg(300, 160, 140), np.full((300, 30), 0.05, np.float32), leg(300, 160, 140)[:, ::-1] * 0.9], axis=1)
    decoded = DecodedImage(pixels=g, format="ARRAY", mode="F", bits=8, size=(g.shape[1], g.shape[0]))
    views = frames(g, clf.spec)
    assert len(views) == 2
    z = clf.logits(np.stack([finalize(v, clf.spec) for v in views]))
    want = softmax(z.mean(axis=0, keepdims=True), 1.7)[0]
    got = clf.image_probabilities(decoded)
    assert np.allclose(got, want, atol=1e-6)
    assert not np.allclose(got, softmax(z[:1], 1.7)[0], atol=1e-4)  # both knees count
