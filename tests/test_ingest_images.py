"""Image embeddings through ONNX Runtime, with tiny vision models built here (conv + pool)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tessera_gpu.cli.main import cli
from tessera_gpu.errors import Unavailable
from tessera_gpu.ingest.images import IMAGENET_MEAN, IMAGENET_STD, ImageEncoder, ImageSettings
from tessera_gpu.ingest.lerobot import LeRobotSource
from tessera_gpu.ingest.pipeline import IngestOptions, ingest
from tessera_gpu.ingest.video import read_frames
from tessera_gpu.io.dataset import load_dataset

onnx = pytest.importorskip("onnx", reason="the test extra's onnx builds the models")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

pytest_plugins = ("tests.ingest_fixtures",)


def tiny_model(
    path: Path,
    *,
    size: int | None = 32,
    pooled: bool = True,
    mean: str | None = None,
    std: str | None = None,
) -> Path:
    """Conv 3->8 (3x3, seeded) + ReLU, then global average pooling to ``image_embeds`` (N, 8)
    when ``pooled``, else the (N, 8, h, w) feature map. ``size`` None: a dynamic input."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["pixel_values", "w", "b"], ["c"], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
    ]
    if pooled:
        nodes += [
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["image_embeds"]),
        ]
        output = helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["N", 8])
    else:
        nodes.append(helper.make_node("Identity", ["r"], ["features"]))
        output = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8, "h", "w"])
    side = size if size is not None else "S"
    image = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, side, side])
    graph = helper.make_graph(nodes, "tiny", [image], [output], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (("image_mean", mean), ("image_std", std)):
        if value is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(model, path)
    return path


def test_image_embeddings_are_unit_deterministic_and_the_episodes_own(
    v30_root: Path, tmp_path: Path
) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    options = IngestOptions(embed="image", image=ImageSettings(model, frames=3))
    first = load_dataset(ingest(v30_root, tmp_path / "a.h5", options).paths[0])
    again = load_dataset(ingest(v30_root, tmp_path / "b.h5", options).paths[0])
    assert first.embeddings is not None
    assert first.embeddings.shape == (24, 8)
    np.testing.assert_allclose(np.linalg.norm(first.embeddings, axis=1), 1.0, atol=1e-5)
    assert first.embeddings_hash == again.embeddings_hash
    # episode 10 by hand: 3 evenly spaced frames, their unit features averaged, made unit
    source = LeRobotSource(v30_root)
    episode = next(e for e in source.episodes("observation.image") if e.index == 10)
    picks = np.linspace(0, episode.length - 1, 3).astype(int).tolist()
    (frames,) = read_frames([(episode.frames, picks, episode.where)])
    encoder = ImageEncoder(ImageSettings(model))
    features = encoder._features(frames)
    mean = (features / np.linalg.norm(features, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(first.embeddings[10], mean / np.linalg.norm(mean), atol=1e-5)
    assert {"idle_fraction", "action_jerk"} <= set(first.fields)  # metrics need no embedding


def test_preprocessing_reads_mean_and_std_from_the_model_unless_given(tmp_path: Path) -> None:
    frame = np.full((50, 70, 3), 128, dtype=np.uint8)
    plain = ImageEncoder(ImageSettings(tiny_model(tmp_path / "a.onnx")))
    x = plain.prepare(frame)
    assert x.shape == (3, 32, 32)  # resized whole to the model's fixed input
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[:, 0, 0], expected, atol=1e-6)
    meta = ImageEncoder(
        ImageSettings(tiny_model(tmp_path / "b.onnx", mean="[0.5, 0.5, 0.5]", std="0.5,0.5,0.5"))
    )
    np.testing.assert_allclose(meta.prepare(frame)[:, 0, 0], (128 / 255 - 0.5) / 0.5, atol=1e-6)
    flags = ImageEncoder(ImageSettings(tmp_path / "b.onnx", mean=(0, 0, 0), std=(1, 1, 1)))
    np.testing.assert_allclose(flags.prepare(frame)[:, 0, 0], 128 / 255, atol=1e-6)


def test_a_dynamic_input_takes_image_size_and_a_feature_map_is_pooled(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "d.onnx", size=None, pooled=False)
    encoder = ImageEncoder(ImageSettings(model, size=48))
    assert (encoder.height, encoder.width) == (48, 48)
    assert encoder.dim == 8
    vector = encoder.embed_episode([np.zeros((20, 20, 3), np.uint8)] * 2)
    assert vector.shape == (8,)


def test_embed_both_puts_trajectory_and_image_side_by_side(v30_root: Path, tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    result = CliRunner().invoke(
        cli,
        [
            "ingest",
            str(v30_root),
            "-o",
            str(tmp_path / "both.h5"),
            "--embed",
            "both",
            "--image-encoder",
            str(model),
            "--no-gifs",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "260-d both embeddings" in result.output
    both = load_dataset(tmp_path / "both.h5")
    trajectory = load_dataset(
        ingest(v30_root, tmp_path / "t.h5", IngestOptions(thumbnails=False, gifs=False)).paths[0]
    )
    assert both.embeddings is not None
    assert trajectory.embeddings is not None
    np.testing.assert_allclose(np.linalg.norm(both.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        both.embeddings[:, :252] * math.sqrt(2), trajectory.embeddings, atol=1e-6
    )
    assert both.has_thumbnails
    assert not both.has_gifs


def test_image_embeddings_need_a_model(v30_root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["ingest", str(v30_root), "-o", str(tmp_path / "x.h5"), "--embed", "image"]
    )
    assert result.exit_code == 1
    assert result.output == "error: --embed image needs --image-encoder MODEL.onnx\n"


def test_without_onnxruntime_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(Unavailable, match=r"pip install 'tessera-gpu\[onnx\]'"):
        ImageEncoder(ImageSettings(tmp_path / "m.onnx"))


def test_a_file_that_is_not_an_onnx_model_is_one_clear_error(
    v30_root: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(
        cli,
        [
            "ingest",
            str(v30_root),
            "-o",
            str(tmp_path / "x.h5"),
            "--embed",
            "image",
            "--image-encoder",
            str(bad),
        ],
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot load {bad} as an ONNX model: ")
    assert not (tmp_path / "x.h5").exists()
