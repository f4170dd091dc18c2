"""Loopback download throughput: `cohere download` vs a plain `huggingface_hub.snapshot_download` of the same files
from the same local Hub look-alike (tests/hub_server.py), in one run; plus the bytes re-sent when a download is
interrupted with Ctrl-C and run again.

    /work/venv/bin/python benchmarks/download_loopback.py [--shard-mb 96] [--shards 3] [--rounds 2]

Both clients fetch the same files (configs, tokenizer, safetensors shards) over HTTP from 127.0.0.1; the server
runs in its own process and serves them with sendfile from the page cache. huggingface_hub checks sizes only; cohere download also verifies the
sha256 of every LFS file before publishing. Runs alternate (hf, ours, hf, ours...) and the best of each is compared.
Numbers vary a lot when other work shares the CPU: compare within one run."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from hub_server import make_tiny_cohere  # noqa: E402

REPO = "CohereForAI/bench-command-r"
ALLOW = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "model.safetensors.index.json", "*.safetensors"]


def build(folder: Path, shard_mb: int, shards: int) -> Path:
    make_tiny_cohere(folder, hidden=256, intermediate=512, layers=2, vocab=512)
    for p in folder.glob("model-*.safetensors"):
        p.unlink()
    (folder / "original").exists() and shutil.rmtree(folder / "original")
    block = os.urandom(1 << 20)
    for k in range(shards):
        with open(folder / f"model-{k + 1:05d}-of-{shards:05d}.safetensors", "wb") as f:
            for _ in range(shard_mb):
                f.write(block)
                block = block[1:] + block[:1]
    for p in folder.iterdir():  # warm the page cache so that no run pays for disk reads
        if p.is_file():
            p.read_bytes()
    return folder


def total_bytes(folder: Path, names: list[str]) -> int:
    return sum((folder / n).stat().st_size for n in names)


class Server:
    """tests/hub_server.py in its own process (so it does not share a GIL with the client being measured)."""

    def __init__(self, folder: Path):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hub_server.py"), REPO, str(folder)],
                                     stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()

    def control(self, what: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/_control/{what}") as r:
            return json.loads(r.read())

    def sent(self) -> int:
        return sum(self.control("stats")["bytes_sent"].values())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # this process, all threads: the client only
    return r.ru_utime + r.ru_stime


def run_hf(srv: Server, dest: Path) -> tuple[float, float]:
    from huggingface_hub import snapshot_download

    c0, t0 = cpu_seconds(), time.perf_counter()
    snapshot_download(REPO, endpoint=srv.url, local_dir=dest, allow_patterns=ALLOW, max_workers=8)
    return time.perf_counter() - t0, cpu_seconds() - c0


def run_ours(srv: Server, home: Path) -> tuple[float, float]:
    os.environ["COHERE_CLI_HOME"] = str(home)
    from cohere_cli.commands.download import run_download

    devnull = open(os.devnull, "w")
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = devnull  # the path and the progress lines
    c0, t0 = cpu_seconds(), time.perf_counter()
    try:
        run_download(REPO, max_workers=8)
    finally:
        sys.stdout, sys.stderr = saved
        devnull.close()
    return time.perf_counter() - t0, cpu_seconds() - c0


def resume_measure(srv: Server, home: Path, files: list[str], folder: Path, rate: float, stop_at: int) -> dict:
    """Ctrl-C a rate-limited `cohere download` after `stop_at` bytes, run it again at full speed, and count what the
    server sent twice."""
    env = {**os.environ, "COHERE_CLI_HOME": str(home), "HF_ENDPOINT": srv.url}
    srv.control("reset")
    srv.control(f"rate?value={rate}")
    proc = subprocess.Popen([sys.executable, "-m", "cohere_cli", "download", REPO], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while srv.sent() < stop_at and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    first = srv.sent()
    srv.control("clear")
    srv.control("reset")
    r = subprocess.run([sys.executable, "-m", "cohere_cli", "download", REPO], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    second = srv.sent()
    size = total_bytes(folder, files)
    return {"exit_code_first_run": proc.returncode, "sent_before": first, "sent_after": second, "total": size,
            "resent": first + second - size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shard-mb", type=int, default=96)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cohere-dl-bench-"))
    try:
        folder = build(work / "repo", args.shard_mb, args.shards)
        srv = Server(folder)
        os.environ["HF_ENDPOINT"] = srv.url
        os.environ["HF_HOME"] = str(work / "hf-home")
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors"))
        size = total_bytes(folder, files)
        print(f"{len(files)} files, {size / 1e6:.1f} MB over http://127.0.0.1 ({os.cpu_count()} CPUs)")
        hf, ours, hf_cpu, ours_cpu = [], [], [], []
        for k in range(args.rounds):
            dest = work / f"hf-{k}"
            wall, cpu = run_hf(srv, dest)
            hf.append(wall)
            hf_cpu.append(cpu)
            shutil.rmtree(dest)
            home = work / f"ours-{k}"
            wall, cpu = run_ours(srv, home)
            ours.append(wall)
            ours_cpu.append(cpu)
            shutil.rmtree(home)
            print(f"  round {k + 1}: huggingface_hub {size / hf[-1] / 1e6:7.1f} MB/s ({hf_cpu[-1]:.2f} CPU s)   "
                  f"cohere download {size / ours[-1] / 1e6:7.1f} MB/s ({ours_cpu[-1]:.2f} CPU s, sha256 included)")
        best_hf, best_ours = size / min(hf) / 1e6, size / min(ours) / 1e6
        print(f"best: huggingface_hub.snapshot_download {best_hf:.1f} MB/s, cohere download {best_ours:.1f} MB/s "
              f"(ratio {best_ours / best_hf:.2f}x; medians {size / statistics.median(hf) / 1e6:.1f} vs "
              f"{size / statistics.median(ours) / 1e6:.1f} MB/s; client CPU per GB "
              f"{min(hf_cpu) / size * 1e9:.2f} s vs {min(ours_cpu) / size * 1e9:.2f} s)")
        res = resume_measure(srv, work / "resume", files, folder, rate=2_000_000, stop_at=size // 3)
        print(f"resume after Ctrl-C (exit {res['exit_code_first_run']}): {res['sent_before'] / 1e6:.1f} MB sent "
              f"before, {res['sent_after'] / 1e6:.1f} MB after, {res['resent']} bytes sent twice "
              f"({100 * res['resent'] / res['total']:.3f}% of {res['total'] / 1e6:.1f} MB)")
        srv.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
