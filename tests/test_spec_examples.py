"""The spec's own example files: docs/embedding-format.md's runnable code blocks run as written
(a newcomer copies them), and the others written the way a user would."""

from __future__ import annotations

import io
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tessera_gpu import load_dataset

DOC = (Path(__file__).resolve().parents[1] / "docs" / "embedding-format.md").read_text()


def doc_block(heading: str) -> str:
    """The first ``python`` block after ``heading`` in docs/embedding-format.md."""
    start = DOC.index(heading)
    return re.search(r"```python\n(.*?)```", DOC[start:], flags=re.S).group(1)  # type: ignore[union-attr]


def run_in(folder: Path, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    exec(compile(code, "docs/embedding-format.md", "exec"), {"print": lambda *a: None})


def test_the_docs_complete_file_example_runs_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It failed with TypeError: No conversion path for dtype('<U5') (np.random.choice
    strings written with plain h5py)."""
    code = doc_block("## Example: Complete File")
    run_in(tmp_path, code.replace("n_episodes = 5000", "n_episodes = 500"), monkeypatch)
    ds = load_dataset(tmp_path / "my_embeddings.h5")
    assert (ds.n_episodes, ds.dim, ds.mode) == (500, 512, "full")
    assert {f.name: f.kind for f in ds.fields.values()} == {
        "success": "bool", "episode_length": "int", "task": "category",
    }  # fmt: skip


def test_the_docs_dataset_examples_run_in_order_and_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``embeddings`` block writes the file, the ``episode_ids`` block adds to it."""
    run_in(tmp_path, "import numpy as np\nimport h5py\n" + doc_block("### `embeddings`"),
           monkeypatch)  # fmt: skip
    run_in(tmp_path, "import h5py\n" + doc_block("### `episode_ids`"), monkeypatch)
    ds = load_dataset(tmp_path / "embeddings.h5")
    assert (ds.n_episodes, ds.dim) == (1000, 512)


def test_the_docs_agree_with_metadata_only_mode() -> None:
    """The rules said embeddings 'must exist', which metadata-only mode contradicts."""
    rules = DOC[DOC.index("## Validation Rules") :].split("##", 2)[1]
    assert "must exist and be 2D" not in rules
    assert "metadata-only" in rules


def spec_complete_file(path: Path, *, strings: str) -> Path:
    """'Example: Complete File', with n_episodes reduced for speed."""
    n_episodes, embedding_dim = 500, 512
    embeddings = np.random.randn(n_episodes, embedding_dim).astype(np.float32)
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    episode_ids = [f"ep_{i:05d}" for i in range(n_episodes)]
    success = np.random.choice([True, False], size=n_episodes, p=[0.7, 0.3])
    episode_length = np.random.randint(50, 200, size=n_episodes)
    task = np.random.choice(["pick", "place", "stack"], size=n_episodes)
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=embeddings)
        f.create_dataset("episode_ids", data=episode_ids)
        metadata = f.create_group("metadata")
        metadata.create_dataset("success", data=success)
        metadata.create_dataset("episode_length", data=episode_length)
        if strings == "string_dtype":
            metadata.create_dataset("task", data=task.astype(h5py.string_dtype()))
        elif strings == "object":
            metadata.create_dataset("task", data=task.astype(object), dtype=h5py.string_dtype())
        else:
            metadata.create_dataset("task", data=np.char.encode(task, "utf-8"))
    return path


def test_spec_example_fails_in_h5py_as_the_spec_writes_it(tmp_path: Path) -> None:
    """Why tessera_gpu.write_dataset exists: the spec's np.random.choice strings don't write."""
    task = np.random.choice(["pick", "place", "stack"], size=10)
    with (
        h5py.File(tmp_path / "x.h5", "w") as f,
        pytest.raises(TypeError, match="No conversion path"),
    ):
        f.create_dataset("task", data=task)


@pytest.mark.parametrize("strings", ["string_dtype", "object", "fixed_bytes"])
def test_spec_complete_file_loads(tmp_path: Path, strings: str) -> None:
    ds = load_dataset(spec_complete_file(tmp_path / "my_embeddings.h5", strings=strings))
    assert (ds.n_episodes, ds.dim) == (500, 512)
    assert ds.fields["task"].kind == "category"
    assert set(ds.fields["task"].categories) == {"pick", "place", "stack"}
    assert ds.fields["success"].kind == "bool"
    assert ds.fields["episode_length"].kind == "int"


def compress_thumbnail(image: np.ndarray, size=(128, 128), quality=80) -> bytes:
    pil_image = Image.fromarray(image).resize(size, Image.LANCZOS)
    buffer = io.BytesIO()
    pil_image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def create_gif(frames: list, size=(128, 128), fps=8, max_frames=16) -> bytes:
    if len(frames) > max_frames:
        indices = np.linspace(0, len(frames) - 1, max_frames, dtype=int)
        frames = [frames[i] for i in indices]
    pil_frames = [Image.fromarray(f).resize(size, Image.LANCZOS) for f in frames]
    buffer = io.BytesIO()
    pil_frames[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=pil_frames[1:],
        duration=int(1000 / fps),
        loop=0,
    )
    return buffer.getvalue()


def test_spec_file_with_thumbnails_and_gifs_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    episodes = [rng.integers(0, 255, (20, 48, 48, 3), dtype=np.uint8) for _ in range(12)]
    embeddings, thumbnails, gifs, episode_ids = [], [], [], []
    for i, episode_frames in enumerate(episodes):
        embeddings.append(episode_frames[len(episode_frames) // 2].reshape(-1)[:64] / 255.0)
        thumbnails.append(np.frombuffer(compress_thumbnail(episode_frames[0]), dtype=np.uint8))
        gifs.append(np.frombuffer(create_gif(list(episode_frames)), dtype=np.uint8))
        episode_ids.append(f"ep_{i:05d}")
    path = tmp_path / "my_embeddings.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=np.array(embeddings, dtype=np.float32))
        f.create_dataset("episode_ids", data=episode_ids)
        vlen_dtype = h5py.vlen_dtype(np.uint8)
        f.create_dataset("thumbnails", data=thumbnails, dtype=vlen_dtype)
        f.create_dataset("gifs", data=gifs, dtype=vlen_dtype)
    ds = load_dataset(path)
    assert ds.has_thumbnails
    assert ds.has_gifs
    with Image.open(io.BytesIO(ds.gif(5))) as im:
        assert im.format == "GIF"
        assert im.n_frames == 16
        assert im.size == (128, 128)
    with Image.open(io.BytesIO(ds.thumbnail(5))) as im:
        assert im.format == "JPEG"


def test_spec_metadata_only_file_loads(tmp_path: Path) -> None:
    n = 200
    path = tmp_path / "meta.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("episode_ids", data=[f"ep_{i:05d}" for i in range(n)])
        metadata = f.create_group("metadata")
        metadata.create_dataset("success", data=np.random.rand(n) < 0.7)
        metadata.create_dataset("robot_id", data=np.random.randint(1, 3, n))
        metadata.create_dataset("gripper_state", data=np.random.rand(n))
    ds = load_dataset(path)
    assert ds.mode == "metadata-only"
    assert {f.name: f.kind for f in ds.fields.values()} == {
        "success": "bool",
        "robot_id": "int",
        "gripper_state": "float",
    }
