"""Choosing the GPU tier: the probe and its named causes, the CPU fallback, the stand-in switch,
RMM, cuML's parameters and cuDF tiles -- all on the CPU, with fakes where CUDA would be."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tessera_gpu import backends
from tessera_gpu.backends import backend_summary, cupy_device, get_backend, gpu_probe, on_gpu
from tessera_gpu.backends.cupy_device import Probe, probe, use_rmm
from tessera_gpu.backends.seeding import MAX_TRIALS, THREADS
from tessera_gpu.backends.standin import NumpyDevice, kmeanspp_step_emulated, topk_emulated
from tessera_gpu.errors import InvalidRequest, Unavailable

from .backend_params import clustered

pytest_plugins = ("pytester",)


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test probes anew, with no stand-in unless it sets one."""
    monkeypatch.delenv("TESSERA_GPU_STANDIN", raising=False)
    backends._probe.cache_clear()
    yield
    backends._probe.cache_clear()


class FakeArray(np.ndarray):
    """A 'device' array: a numpy array of another type, so to_host has something to convert."""


class FakeStream:
    """A CUDA stream whose capture records the kernel launches made in it, as a graph."""

    capturing: list[Any] | None = None  # the launches being recorded, while one captures

    def __init__(self, non_blocking: bool = False) -> None:
        assert non_blocking  # graphs cannot be captured on the legacy default stream

    def __enter__(self) -> FakeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def begin_capture(self) -> None:
        FakeStream.capturing = []

    def end_capture(self) -> Any:
        nodes, FakeStream.capturing = FakeStream.capturing or [], None
        return types.SimpleNamespace(launch=lambda stream=None: [node() for node in nodes])

    def synchronize(self) -> None:
        pass


def fake_cupy(**overrides: Any) -> types.SimpleNamespace:
    """Enough of CuPy's surface for the probe, on numpy; ``overrides`` break one piece."""

    def raw_kernel(source: str, name: str, options: tuple[str, ...] = ()) -> Any:
        assert "--fmad=false" in options
        assert name in ("topk_rows", "kmeanspp_step")

        def launch(grid: Any, block: Any, args: tuple[Any, ...]) -> None:
            if name == "kmeanspp_step":
                assert block == (THREADS,)
                step = lambda: kmeanspp_step_emulated(*args, blocks=grid[0])  # noqa: E731
                (FakeStream.capturing.append if FakeStream.capturing is not None else apply)(step)
                return
            gram, qn, dn, _, _, kk, out_d, out_i = args
            out_d[...], out_i[...] = topk_emulated(gram, qn, dn, int(kk))

        return launch

    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        runtimeGetVersion=lambda: 13000,
        getDeviceProperties=lambda i: {"name": b"Fake H200"},
        memGetInfo=lambda: (100 * 2**30, 141 * 2**30),
    )
    cuda = types.SimpleNamespace(
        runtime=runtime,
        Device=lambda i=0: types.SimpleNamespace(
            id=0, compute_capability="90", synchronize=lambda: None
        ),
        set_allocator=lambda fn: None,
        Stream=FakeStream,
    )
    cp = types.SimpleNamespace(
        cuda=cuda,
        ndarray=FakeArray,
        RawKernel=raw_kernel,
        asarray=lambda a: np.asarray(a).view(FakeArray),
        asnumpy=lambda a: np.asarray(a).view(np.ndarray),
        empty=np.empty,
        full=np.full,
        zeros=np.zeros,
        ascontiguousarray=np.ascontiguousarray,
        inf=np.inf,
        float32=np.float32,
        float64=np.float64,
        int64=np.int64,
        uint32=np.uint32,
        linalg=types.SimpleNamespace(eigh=np.linalg.eigh),
        get_default_memory_pool=lambda: types.SimpleNamespace(free_bytes=lambda: 2**30),
        __version__="14.2.0",
    )
    for dotted, value in overrides.items():
        target = cp
        *path, last = dotted.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)
    return cp


def apply(fn: Any) -> None:
    fn()


def _raise(exc: BaseException) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


# ---- the probe ---------------------------------------------------------------------------------


def test_probe_runs_a_kernel_a_matmul_and_eigh() -> None:
    found = probe(fake_cupy())
    assert found == Probe(True, "ok", "Fake H200: a kernel, a matmul and eigh ran")


@pytest.mark.parametrize(
    ("override", "cause", "words"),
    [
        (
            {"cuda.runtime.getDeviceCount": _raise(RuntimeError("cudaErrorInsufficientDriver"))},
            "no_driver",
            "no usable NVIDIA driver",
        ),
        ({"cuda.runtime.getDeviceCount": lambda: 0}, "no_device", "no CUDA device found"),
        (
            {"RawKernel": _raise(RuntimeError("CuPy failed to load libnvrtc.so.13"))},
            "no_toolkit",
            "CUDA toolkit libraries missing",
        ),
        (
            {"linalg.eigh": _raise(ImportError("libcusolver.so.12: cannot open shared object"))},
            "no_toolkit",
            "cupy-cuda13x[ctk]",
        ),
        (
            {"cuda.Device": lambda i=0: types.SimpleNamespace(id=0, compute_capability="60")},
            "unsupported_gpu",
            "compute capability 6.0; this CUDA runtime needs 7.5 or newer",
        ),
        (
            {"RawKernel": _raise(RuntimeError("cudaErrorNoKernelImageForDevice: no kernel image"))},
            "unsupported_gpu",
            "unsupported GPU",
        ),
    ],
)
def test_probe_names_the_cause(override: dict[str, Any], cause: str, words: str) -> None:
    found = probe(fake_cupy(**override))
    assert not found.ok
    assert found.cause == cause
    assert words in found.reason


class CompileException(Exception):
    """CuPy's ``cupy.cuda.compiler.CompileException``: its text is NVRTC's log."""

    def __init__(self, msg: str, source: str, name: str, options: tuple[str, ...]) -> None:
        self._msg, self.source, self.name, self.options = msg, source, name, options
        super().__init__()

    def __str__(self) -> str:
        return self._msg


def test_a_kernel_that_does_not_compile_is_not_a_missing_toolkit() -> None:
    log = (
        '/tmp/tmp1/9f2c.cu(14): error: identifier "wrost" is undefined\n'
        '1 error detected in the compilation of "/tmp/tmp1/9f2c.cu".'
    )

    def broken(source: str, name: str, options: tuple[str, ...] = ()) -> Any:
        raise CompileException(log, source, name, (*options, "-ftz=true"))

    found = probe(fake_cupy(RawKernel=broken))
    assert found.cause == "kernel_error"
    assert found.reason.startswith("a Tessera GPU kernel failed to compile (a bug to report, "
                                   "not your setup): topk_rows")  # fmt: skip
    assert 'identifier "wrost" is undefined' in found.reason  # the compiler's own log
    assert "-ftz=true" in found.reason  # and the options it was given
    assert "[ctk]" not in found.reason


def test_probe_checks_the_kernel_against_its_emulation() -> None:
    def wrong_kernel(source: str, name: str, options: tuple[str, ...] = ()) -> Any:
        def launch(grid: Any, block: Any, args: tuple[Any, ...]) -> None:
            args[-2][...], args[-1][...] = 0.0, 0

        return launch

    found = probe(fake_cupy(RawKernel=wrong_kernel))
    assert found.cause == "probe_failed"
    assert "disagrees with its numpy emulation" in found.reason


def test_a_warning_is_not_a_missing_gpu() -> None:
    """pytest turns warnings into errors; the probe must let them through, not skip the tier."""
    with pytest.raises(UserWarning, match="deprecated"):
        probe(fake_cupy(**{"cuda.runtime.getDeviceCount": _raise(UserWarning("deprecated"))}))


def test_no_cupy_here_is_named() -> None:
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    assert probe().cause == "no_cupy"


# ---- fallback and refusal ----------------------------------------------------------------------


def _failing_probe(monkeypatch: pytest.MonkeyPatch, cause: str, reason: str) -> None:
    monkeypatch.setattr(cupy_device, "probe", lambda cp=None: Probe(False, cause, reason))


def test_auto_falls_back_to_the_cpu_and_keeps_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_probe(monkeypatch, "no_toolkit", "CUDA toolkit libraries missing (nvrtc)")
    backend = get_backend("auto")
    assert backend.name == "cpu"
    assert backend.describe()["gpu_fallback"] == "CUDA toolkit libraries missing (nvrtc)"
    assert backend_summary(backend) == {
        "name": "cpu",
        "device": backend.device,
        "gpu_fallback": "CUDA toolkit libraries missing (nvrtc)",
    }
    assert "gpu_fallback" not in get_backend("cpu").describe()


def test_gpu_mode_names_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_probe(monkeypatch, "unsupported_gpu", "unsupported GPU: compute capability 6.0")
    with pytest.raises(Unavailable, match="not available: unsupported GPU: compute capability"):
        get_backend("gpu")


def test_doctor_reports_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera_gpu.cli.main import cli

    _failing_probe(monkeypatch, "no_driver", "no usable NVIDIA driver (libcuda.so.1)")
    out = CliRunner().invoke(cli, ["doctor", "--json", "--device", "auto"])
    report = json.loads(out.output)
    assert report["gpu_cause"] == "no_driver"
    assert report["will_use"] == "cpu"
    assert report["why"] == "no GPU backend: no usable NVIDIA driver (libcuda.so.1)"
    assert report["standin"] is None


# ---- the stand-in switch -----------------------------------------------------------------------


def test_standin_makes_gpu_and_auto_run_the_cupy_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera_gpu.cli.main import cli

    monkeypatch.setenv("TESSERA_GPU_STANDIN", "numpy")
    for mode in ("gpu", "auto"):
        backend = get_backend(mode)
        assert backend.name == "cupy"
        assert backend.standin == "numpy"
        assert not on_gpu(backend)
    assert backend_summary(backend) == {
        "name": "cupy",
        "device": backend.device,
        "standin": "numpy",
    }
    assert gpu_probe().cause == "standin"
    with pytest.raises(Unavailable, match="the stand-in covers the CuPy tier only"):
        backends.make_backend("cuml")
    report = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).output)
    assert report["standin"] == "numpy"
    assert report["will_use"] == "cupy"
    text = CliRunner().invoke(cli, ["doctor"]).output
    assert "numpy stand-in for CuPy (TESSERA_GPU_STANDIN: tests only)" in text


def test_an_unknown_standin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_GPU_STANDIN", "torch")
    with pytest.raises(InvalidRequest, match="TESSERA_GPU_STANDIN must be one of numpy"):
        get_backend("gpu")


def test_cpu_mode_never_reads_the_standin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_GPU_STANDIN", "numpy")
    assert get_backend("cpu").name == "cpu"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_health_says_the_standin_is_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from litestar.testing import AsyncTestClient
    from tessera_app.main import create_app

    from tessera_gpu.settings import Settings

    from .api_calls import TEST_HOSTS

    monkeypatch.setenv("TESSERA_GPU_STANDIN", "numpy")
    settings = Settings(device="gpu", data_dir=tmp_path, allowed_host=TEST_HOSTS)
    async with AsyncTestClient(create_app(settings)) as client:
        body = (await client.get("/api/health")).json()
    assert body["backend"]["standin"] == "numpy"
    assert body["backend"]["name"] == "cupy"


def test_project_command_runs_on_the_standin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tessera_gpu.cli.main import cli
    from tessera_gpu.io.writer import write_dataset

    monkeypatch.setenv("TESSERA_GPU_STANDIN", "numpy")
    x = clustered(300, 16, seed=41)[0]
    data = write_dataset(tmp_path / "d.h5", embeddings=x, episode_ids=[f"e{i}" for i in range(300)])
    args = ["project", str(data), "--device", "gpu", "--no-cache", "-o", str(tmp_path / "m.npy")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "(cupy, kNN exact-numpy-standin" in result.output
    assert np.load(tmp_path / "m.npy").shape == (300, 2)


# ---- RMM, cuML, cuDF ---------------------------------------------------------------------------


def _module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_cupy_allocates_through_rmm_when_rapids_is_here(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen: list[Any] = []
    cp = fake_cupy(**{"cuda.set_allocator": chosen.append})
    assert use_rmm(cp) == "cupy-pool"
    assert chosen == []
    allocator = object()
    _module(monkeypatch, "rmm")
    _module(monkeypatch, "rmm.allocators")
    _module(monkeypatch, "rmm.allocators.cupy", rmm_cupy_allocator=allocator)
    assert use_rmm(cp) == "rmm"
    assert chosen == [allocator]
    device = cupy_device.CupyDevice(cp)
    assert device.describe()["allocator"] == "rmm"
    assert device.describe()["gpu_memory_free_gib"] == 100.0  # RMM reports its own use


def test_cupy_pool_blocks_count_as_free() -> None:
    info = cupy_device.CupyDevice(fake_cupy()).describe()
    assert info["allocator"] == "cupy-pool"
    assert info["gpu_memory_free_gib"] == 101.0


@pytest.mark.parametrize(
    ("free_gib", "block_bytes"),
    [(131, 8 << 30), (70, 70 << 26), (1, 128 << 20)],  # an H200; one half full; a small GPU
)
def test_query_blocks_are_sized_from_free_device_memory(free_gib: int, block_bytes: int) -> None:
    """1/16 of the free memory (the pool's cached 1 GiB included), 128 MiB to 8 GiB."""
    memory = {"cuda.runtime.memGetInfo": lambda: ((free_gib - 1) * 2**30, 141 * 2**30)}
    assert cupy_device.CupyDevice(fake_cupy(**memory)).block_bytes == block_bytes


@pytest.mark.parametrize("capture_fails", [False, True])
def test_the_gpu_device_seeds_with_one_launch_per_batch_of_centres(capture_fails: bool) -> None:
    """CupyDevice's host side (buffers, grid, the first step, then 64 steps captured as one
    CUDA graph and replayed, the rest one by one) on a fake CuPy whose kernel is the
    emulation: the stand-in's centres, 1 + 2 graph launches + 21 for k=150.  Where capture
    fails, every step is launched on its own, with the same centres, and describe() says why."""
    x = clustered(2000, 24, seed=44)[0]
    draws = np.random.default_rng(0).random((150, MAX_TRIALS))
    cp = fake_cupy()
    if capture_fails:
        cp.cuda.Stream = type("NoCapture", (FakeStream,), {"begin_capture": _raise(
            RuntimeError("cudaErrorStreamCaptureUnsupported"))})  # fmt: skip
    device = cupy_device.CupyDevice(cp)
    got = device.kmeanspp(x, 150, first=5, draws=draws, n_trials=5)
    want = NumpyDevice().kmeanspp(x, 150, first=5, draws=draws, n_trials=5)
    np.testing.assert_array_equal(got, want)
    if capture_fails:
        assert dict(device.launches.by_name) == {"kmeanspp_step": 150}
        assert "StreamCaptureUnsupported" in device.describe()["graph_fallback"]
    else:
        assert dict(device.launches.by_name) == {"kmeanspp_step": 22, "kmeanspp_graph": 2}
        assert "graph_fallback" not in device.describe()


def test_cuml_gets_the_cpu_tiers_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera_gpu.backends.cuml_backend import CumlBackend, cuml_importable
    from tessera_gpu.projection.project import ProjectionParams, project

    seen: dict[str, Any] = {}

    class UMAP:
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs)

        def fit_transform(self, x: Any) -> np.ndarray:
            return np.zeros((len(x), 2))

    _module(monkeypatch, "cuml", UMAP=UMAP, __version__="26.02")
    assert cuml_importable()
    backend = CumlBackend(NumpyDevice())
    x = clustered(500, 8, seed=42)[0]
    params = ProjectionParams(n_neighbors=40, min_dist=0.2, seed=9, negative_sample_rate=7)
    info = project(backend.to_device(x), backend=backend, params=params).info
    assert seen == {
        "n_neighbors": 40,
        "n_components": 2,
        "metric": "euclidean",
        "min_dist": 0.2,
        "spread": 1.0,
        "n_epochs": params.epochs_for(500),
        "negative_sample_rate": 7,
        "init": "spectral",
        "random_state": 9,
        "build_algo": "brute_force_knn",
    }
    assert info["n_epochs"] == 500
    assert info["init"] == "spectral"
    assert info["knn"] == "brute_force_knn"
    assert info["params"]["seed"] == 9
    assert info["backend"] == "cuml"


def test_cudf_tiles_only_on_a_gpu_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    from tessera_gpu.render import tiles
    from tessera_gpu.render.colors import ColorBy
    from tessera_gpu.render.mapcache import MapCache

    frames: list[int] = []

    def data_frame(columns: dict[str, Any]) -> pd.DataFrame:
        frames.append(len(columns["x"]))
        return pd.DataFrame(columns)

    monkeypatch.setattr(tiles, "_cudf", lambda: types.SimpleNamespace(DataFrame=data_frame))
    coords = np.random.default_rng(43).normal(size=(400, 2))
    on_cpu = tiles.render_tile(tiles.TileIndex(coords).view(), ColorBy("density"), 0, 0, 0)
    assert frames == []  # a CPU backend's tiles never touch cuDF, even where it imports
    index = tiles.TileIndex(coords, gpu=True)
    on_gpu_tile = tiles.render_tile(index.view(), ColorBy("density"), 0, 0, 0)
    assert frames == [400]
    assert on_gpu_tile == on_cpu
    tiles.render_tile(index.view("f", np.arange(400) < 100), ColorBy("density"), 0, 0, 0)
    assert frames == [400, 100]  # filtered views keep the choice
    assert MapCache(gpu=True).gpu
    assert not MapCache().gpu


# ---- TESSERA_REQUIRE_GPU ------------------------------------------------------------------------

SKIPPING = """
import pytest

@pytest.mark.gpu
def test_cupy():
    pytest.skip("no GPU")

@pytest.mark.gpu
@pytest.mark.cuml
def test_cuml():
    pytest.skip("no cuML")

@pytest.mark.gpu
@pytest.mark.real_gpu
def test_real():
    pytest.skip("the stand-in")

def test_cpu():
    pytest.skip("something else")
"""


def test_require_gpu_turns_gpu_skips_into_failures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    gpu: g\n    cuml: c\n    real_gpu: r\n")
    pytester.makepyfile(test_skips=SKIPPING)
    pytester.runpytest_inprocess().assert_outcomes(skipped=4)
    monkeypatch.setenv("TESSERA_REQUIRE_GPU", "1")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(failed=2, skipped=2)  # the CuPy and real-GPU tests
    result.stdout.fnmatch_lines(["*TESSERA_REQUIRE_GPU=1, but this GPU test skipped*no GPU*"])
    monkeypatch.setenv("TESSERA_GPU_STANDIN", "numpy")  # a rehearsal: real-GPU tests may skip
    pytester.runpytest_inprocess().assert_outcomes(failed=1, skipped=3)
