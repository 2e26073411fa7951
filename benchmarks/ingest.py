"""``tessera ingest`` throughput and memory, against a naive per-episode decode, in one run.

    python benchmarks/ingest.py [--episodes 2000] [--frames 100] [--size 96] [--small 500]
                                [--repeats 3] [--baseline-episodes 300] [--smoke] [--out DIR]

Data: synthetic LeRobot v3.0 roots from ``benchmarks/robot_sources.py`` (the tests' writer,
LeRobot 0.6.1's layout): ``--episodes`` episodes of ``--frames`` frames at ``--size`` px, 10 fps,
H.264 (libx264, GOP 2 as LeRobot's default), 100 episodes per MP4 and 200 per data file, plus a
root of ``--small`` episodes for the memory comparison; cached in ``benchmarks/.cache/``.

Measured, each ingest in its own process (seconds, peak RSS):

1. trajectory only (``--no-previews``: no video decoded), 2 workers: episodes/s;
2. with thumbnails and GIFs, 2 workers and 1 worker: episodes/s;
3. decoding alone, 1 thread, frames/s: Tessera's (one forward decode per batch, the 17 frames an
   episode's thumbnail and GIF need made RGB) and the baseline's (its decoding time only);
4. the baseline, in the same run: what a script on LeRobot's own loader does per episode --
   PyAV seek to the keyframe before its first frame, decode forward to its last converting
   every decoded frame to RGB (``decode_video_frames_pyav``), then the same thumbnail, GIF,
   embedding and metrics, 1 thread -- on the first ``--baseline-episodes`` episodes; the ratio
   is Tessera's episodes/s over the baseline's;
5. peak RSS of both modes at ``--small`` and ``--episodes`` episodes: it must not grow with the
   dataset (streamed, not loaded whole).

Prints a table and writes ``results/ingest.json`` (``ingest-smoke.json`` with ``--smoke``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.data import CACHE_DIR  # noqa: E402
from benchmarks.robot_sources import synthetic_episodes, write_lerobot_v30  # noqa: E402

TARGET_TRAJECTORY = 200.0  # episodes/s, 2 cores
TARGET_PREVIEWS = 20.0


def dataset(episodes: int, frames: int, size: int) -> Path:
    """The cached synthetic root (written once; a .done marker says it is whole)."""
    root = CACHE_DIR / f"lerobot-v30-{episodes}x{frames}-{size}px"
    if not (root / ".done").exists():
        started = time.perf_counter()
        eps = synthetic_episodes(
            episodes, frames, seed=0, behaviours={i: "idle" for i in range(7, episodes, 50)}
        )
        write_lerobot_v30(root, eps, size=size, episodes_per_video=100, episodes_per_data_file=200)
        (root / ".done").write_text("")
        print(f"wrote {root} in {time.perf_counter() - started:.0f} s", flush=True)
    return root


# ---- one measurement, in its own process ------------------------------------------------------


def measure_ingest(root: Path, previews: bool, workers: int) -> dict[str, Any]:
    from tessera_gpu.ingest.pipeline import IngestOptions, ingest

    options = IngestOptions(thumbnails=previews, gifs=previews, workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = ingest(root, Path(tmp) / "out.h5", options)
        seconds = time.perf_counter() - started
    return {"episodes": result.n_episodes, "seconds": seconds}


def measure_decode(root: Path) -> dict[str, Any]:
    """Decoding alone, in the pipeline's batches: every frame decoded once, the thumbnail's and
    the GIF's frames (17 an episode) converted to RGB."""
    from tessera_gpu.ingest.lerobot import LeRobotSource
    from tessera_gpu.ingest.pipeline import GIF_FRAMES, _spread
    from tessera_gpu.ingest.video import read_frames

    source = LeRobotSource(root)
    episodes = list(source.episodes(source.cameras[0]))
    frames = sum(e.length for e in episodes)
    started = time.perf_counter()
    for start in range(0, len(episodes), 16):
        batch = episodes[start : start + 16]
        picks = [sorted({0, *_spread(e.length, GIF_FRAMES)}) for e in batch]
        read_frames([(e.frames, p, e.where) for e, p in zip(batch, picks, strict=True)])
    return {"frames": frames, "seconds": time.perf_counter() - started}


def measure_baseline(root: Path, limit: int) -> dict[str, Any]:
    """Per episode: LeRobot's PyAV loader's seek-and-decode, then the same outputs."""
    from benchmarks.robot_sources import seek_and_decode
    from tessera_gpu.ingest.lerobot import LeRobotSource
    from tessera_gpu.ingest.metrics import quality_metrics
    from tessera_gpu.ingest.pipeline import GIF_FRAMES, _spread
    from tessera_gpu.ingest.trajectory import TrajectoryEmbedder
    from tessera_gpu.io.writer import encode_gif, encode_thumbnail

    source = LeRobotSource(root)
    embedder = TrajectoryEmbedder.for_source(*source.statistics())
    started = time.perf_counter()
    done = frames = 0
    decoding = 0.0
    for episode in source.episodes(source.cameras[0]):
        if done == limit:
            break
        picks = sorted({0, *_spread(episode.length, GIF_FRAMES)})
        clip = episode.frames
        decode_started = time.perf_counter()
        got = seek_and_decode(clip.path, clip.timestamps[picks], convert_every_frame=True)
        decoding += time.perf_counter() - decode_started
        encode_thumbnail(got[0])
        encode_gif(list(got))
        state, action = embedder.standardised(episode)
        quality_metrics(state, action, episode.fps)
        embedder.embed(state, action)
        done += 1
        frames += episode.length
    return {
        "episodes": done,
        "frames": frames,
        "seconds": time.perf_counter() - started,
        "decode_seconds": decoding,
    }


def child(args: argparse.Namespace) -> None:
    root = Path(args.root)
    if args.child == "ingest":
        out = measure_ingest(root, args.previews, args.workers)
    elif args.child == "decode":
        out = measure_decode(root)
    else:
        out = measure_baseline(root, args.baseline_episodes)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_child(*argv: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-episodes", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", choices=("ingest", "decode", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--previews", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.smoke:
        args.episodes, args.frames, args.small, args.repeats, args.baseline_episodes = (
            40,
            20,
            20,
            1,
            10,
        )
    report(args, collect(args))


def collect(args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()[0]
    big = dataset(args.episodes, args.frames, args.size)
    small = dataset(args.small, args.frames, args.size)
    runs: dict[str, Any] = {}

    def ingest(root: Path, previews: bool, workers: int, repeats: int) -> dict[str, Any]:
        flags = ["--child", "ingest", "--root", str(root), "--workers", str(workers)]
        results = [run_child(*flags, *(["--previews"] if previews else [])) for _ in range(repeats)]
        seconds = statistics.median(r["seconds"] for r in results)
        return {
            "episodes": results[0]["episodes"],
            "seconds_median": seconds,
            "seconds_all": [r["seconds"] for r in results],
            "episodes_per_s": results[0]["episodes"] / seconds,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        }

    runs["trajectory_2w"] = ingest(big, False, 2, args.repeats)
    runs["previews_2w"] = ingest(big, True, 2, args.repeats)
    runs["previews_1w"] = ingest(big, True, 1, 1)
    decode = [run_child("--child", "decode", "--root", str(big)) for _ in range(args.repeats)]
    seconds = statistics.median(d["seconds"] for d in decode)
    runs["decode"] = {
        "frames": decode[0]["frames"],
        "seconds_median": seconds,
        "frames_per_s": decode[0]["frames"] / seconds,
    }
    base = run_child(
        "--child",
        "baseline",
        "--root",
        str(big),
        "--baseline-episodes",
        str(args.baseline_episodes),
    )
    runs["baseline"] = {
        **base,
        "episodes_per_s": base["episodes"] / base["seconds"],
        "decode_frames_per_s": base["frames"] / base["decode_seconds"],
    }
    runs["trajectory_small"] = ingest(small, False, 2, 1)
    runs["previews_small"] = ingest(small, True, 2, 1)
    return {
        "benchmark": "ingest",
        "mode": "smoke" if args.smoke else "full",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_start": round(load, 2),
            "load_average_at_end": round(os.getloadavg()[0], 2),
        },
        "data": {
            "episodes": args.episodes,
            "frames": args.frames,
            "size": args.size,
            "small": args.small,
            "codec": "h264 (libx264, GOP 2)",
            "fps": 10,
        },
        "runs": runs,
        "targets": {
            "trajectory_episodes_per_s": TARGET_TRAJECTORY,
            "previews_episodes_per_s": TARGET_PREVIEWS,
        },
    }


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    r = results["runs"]
    base = r["baseline"]["episodes_per_s"]
    rows = [
        ("trajectory only, 2 workers", r["trajectory_2w"], TARGET_TRAJECTORY),
        ("thumbnails + GIFs, 2 workers", r["previews_2w"], TARGET_PREVIEWS),
        ("thumbnails + GIFs, 1 worker", r["previews_1w"], None),
    ]
    lines = [
        f"# Ingest benchmark ({results['mode']}): {args.episodes:,} episodes x "
        f"{args.frames} frames, {args.size}x{args.size}, "
        f"load {results['machine']['load_average_at_start']}",
        "",
        "| run | episodes/s | vs baseline | target | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, run, target in rows:
        rate = run["episodes_per_s"]
        ratio = f"{rate / base:.1f}x" if "previews" in name or "GIFs" in name else "-"
        goal = f">= {target:.0f} ({'met' if rate >= target else 'MISSED'})" if target else "-"
        lines.append(f"| {name} | {rate:,.1f} | {ratio} | {goal} | {run['peak_rss_mb']:.0f} |")
    lines.append(
        f"| baseline: per-episode seek + decode (LeRobot's loader), 1 thread, "
        f"{r['baseline']['episodes']} episodes | {base:,.1f} | 1.0x | - | "
        f"{r['baseline']['peak_rss_mb']:.0f} |"
    )
    lines += [
        "",
        f"decoding alone, 1 thread: {r['decode']['frames_per_s']:,.0f} frames/s (one forward "
        "decode per batch, the 17 frames of an episode's thumbnail and GIF made RGB); the "
        f"baseline's {r['baseline']['decode_frames_per_s']:,.0f} frames/s (a seek per episode, "
        "every decoded frame made RGB)",
        "",
        "| peak RSS MB | " + f"{args.small:,} episodes | {args.episodes:,} episodes |",
        "|---|---:|---:|",
        f"| trajectory only | {r['trajectory_small']['peak_rss_mb']:.0f} | "
        f"{r['trajectory_2w']['peak_rss_mb']:.0f} |",
        f"| thumbnails + GIFs | {r['previews_small']['peak_rss_mb']:.0f} | "
        f"{r['previews_2w']['peak_rss_mb']:.0f} |",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "ingest-smoke" if args.smoke else "ingest"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
