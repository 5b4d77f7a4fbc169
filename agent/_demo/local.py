"""``python -m agent._demo.local``: publish, verify, delta-publish and install a model, locally.

Generates a two-variant model package (safetensors-style files of seeded random
tensors, about 300 MiB), publishes it as 1.0.0 into a temporary data
directory, verifies it, prints the manifest and the store statistics, then
changes about 3% of the tensors, publishes 1.1.0 and shows how little of it was
new. Finally it installs both versions and rolls back. Everything is deleted at
the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import blake3

from agent._storage.install import Installer
from agent._storage.keys import init_keys, load_key
from agent._storage.paths import DataDir
from agent._storage.publish import PublishResult, publish
from agent._storage.store import ChunkStore
from protocol import Manifest

MiB = 1024 * 1024

TOML = """\
[[variant]]
id = "fp16-gpu"
precision = "fp16"
min_gpu_mem_gb = 4
execution_providers = ["CUDAExecutionProvider"]
min_storage_mb = 400

[[variant]]
id = "int8-cpu"
precision = "int8"
cpu_arch = ["x86_64", "aarch64"]
execution_providers = ["CPUExecutionProvider"]
min_ram_gb = 1
"""


def _tensor_bytes(seed: int, name: str, size: int, generation: int) -> bytes:
    return blake3.blake3(f"{seed}/{name}/{generation}".encode()).digest(length=size)


_Tensors = list[tuple[str, str, list[int]]]


def _layout(variant: str, layers: int) -> _Tensors:
    dtype = "F16" if variant == "fp16-gpu" else "I8"
    out = []
    for i in range(layers):
        out.append((f"layers.{i}.attn.qkv.weight", dtype, [1024, 1536]))
        out.append((f"layers.{i}.mlp.up.weight", dtype, [1024, 1024]))
    return out


def _write_safetensors(path: Path, seed: int, variant: str, tensors: _Tensors,
                       changed: set[str], generation: int,
                       ) -> tuple[int, list[tuple[str, int, int]]]:
    """Write (or, with ``changed``, patch in place) a safetensors file; its size and layout."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    spans = []
    for name, dtype, shape in tensors:
        size = shape[0] * shape[1] * (2 if dtype == "F16" else 1)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        spans.append((name, offset, size))
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    base = 8 + len(head)
    if not changed:
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            for name, _, size in spans:
                f.write(_tensor_bytes(seed, f"{variant}/{name}", size, 0))
    else:
        with open(path, "r+b") as f:
            for name, off, size in spans:
                if name in changed:
                    f.seek(base + off)
                    f.write(_tensor_bytes(seed, f"{variant}/{name}", size, generation))
    return base + offset, spans


def _summary(m: Manifest) -> str:
    lines = [f"  model {m.model_id} {m.version}  manifest {m.manifest_id[:16]}…  "
             f"publisher {m.publisher_id}"]
    for rank, v in enumerate(m.variants, 1):
        r = v.requirements
        need = [f"precision {r.precision}"]
        if r.min_gpu_mem_gb:
            need.append(f"GPU >= {r.min_gpu_mem_gb:g} GB")
        if r.cpu_arch:
            need.append("cpu " + "/".join(r.cpu_arch))
        if r.execution_providers:
            need.append("EP " + "/".join(r.execution_providers))
        lines.append(f"  {rank}. {v.variant_id:<9} {len(v.files)} files  "
                     f"{v.size / MiB:7.1f} MiB  {len(v.chunk_refs()):5d} chunks  "
                     f"({', '.join(need)})")
    return "\n".join(lines)


def _publish_line(res: PublishResult, seconds: float) -> str:
    return (f"  {res.files} files, {res.bytes_total / MiB:.1f} MiB, {res.chunks_total} chunks "
            f"in {seconds:.2f} s ({res.bytes_total / MiB / seconds:.0f} MiB/s); "
            f"new: {res.chunks_new} chunks, {res.bytes_new / MiB:.1f} MiB")


def run(seed: int, layers: int, keep: bool) -> int:
    work = Path(tempfile.mkdtemp(prefix="shoal-demo-"))
    try:
        t0 = time.perf_counter()
        pkg = work / "package"
        pkg.mkdir()
        (pkg / "shoal-model.toml").write_text(TOML)
        layouts = {}
        total = 0
        for variant in ("fp16-gpu", "int8-cpu"):
            (pkg / variant).mkdir()
            (pkg / variant / "config.json").write_text(
                json.dumps({"layers": layers, "hidden": 1024, "variant": variant}))
            tensors = _layout(variant, layers)
            size, _ = _write_safetensors(pkg / variant / "model.safetensors", seed, variant,
                                         tensors, set(), 0)
            layouts[variant] = tensors
            total += size
        n_tensors = sum(len(t) for t in layouts.values())
        print(f"generated a 2-variant package: {n_tensors} tensors, {total / MiB:.0f} MiB "
              f"(seed {seed}) in {time.perf_counter() - t0:.1f} s")

        data = DataDir(work / "data")
        init_keys(data.keys)
        publisher = load_key(data.keys, "publisher")
        store = ChunkStore(data.store)

        print("\n== publish detector 1.0.0")
        t = time.perf_counter()
        r1 = publish(store, pkg, "detector", "1.0.0", publisher)
        print(_publish_line(r1, time.perf_counter() - t))
        m1 = store.get_manifest(r1.manifest_id)

        print("\n== verify (signature + every chunk re-read and hashed)")
        t = time.perf_counter()
        m1.verify()
        problems = store.verify_manifest(m1)
        print(f"  signature ok; {len({c.hash for c in m1.iter_chunks()})} chunks verified, "
              f"{len(problems)} problems, {time.perf_counter() - t:.2f} s")

        print("\n== manifest")
        print(_summary(m1))

        print("\n== publish detector 1.1.0 (fine-tuned: ~3% of the tensors changed)")
        rng = random.Random(seed)
        all_names = [(v, name) for v, ts in layouts.items() for name, _, _ in ts]
        n_changed = max(1, round(0.03 * len(all_names)))
        picked = rng.sample(all_names, n_changed)
        changed_bytes = 0
        for variant in layouts:
            names = {n for v, n in picked if v == variant}
            if names:
                _, spans = _write_safetensors(pkg / variant / "model.safetensors", seed,
                                              variant, layouts[variant], names, 1)
                changed_bytes += sum(s for n, _, s in spans if n in names)
        print(f"  changed {n_changed} of {len(all_names)} tensors "
              f"({changed_bytes / MiB:.1f} MiB of {total / MiB:.0f} MiB)")
        t = time.perf_counter()
        r2 = publish(store, pkg, "detector", "1.1.0", publisher)
        print(_publish_line(r2, time.perf_counter() - t))
        print(f"  delta: {r2.chunks_new} of {r2.chunks_total} chunks "
              f"({100 * r2.chunks_new / r2.chunks_total:.1f}%), "
              f"{r2.bytes_new / MiB:.1f} MiB stored for {changed_bytes / MiB:.1f} MiB changed "
              f"(x{r2.bytes_new / max(changed_bytes, 1):.2f})")

        print("\n== install int8-cpu 1.0.0, upgrade to 1.1.0, roll back")
        inst = Installer(data, store)
        t = time.perf_counter()
        inst.install(m1, "int8-cpu")
        res = inst.install(store.get_manifest(r2.manifest_id), "int8-cpu")
        current = data.model_dir("detector") / "current"
        print(f"  installed both in {time.perf_counter() - t:.2f} s; current -> "
              f"{os.readlink(current)} (previous {res.previous} kept)")
        inst.activate("detector", "1.0.0")
        print(f"  rolled back: current -> {os.readlink(current)}, no transfer")

        print("\n== store statistics")
        s = store.statistics()
        print(f"  {s.chunks} chunks, {s.bytes / MiB:.1f} MiB for "
              f"{(r1.bytes_total + r2.bytes_total) / MiB:.0f} MiB of published files; "
              f"{s.manifests} manifests ({s.pinned} pinned); "
              f"{s.corrupt_detected} corrupt detected")
        print(f"\ndone in {time.perf_counter() - t0:.1f} s")
        if keep:
            print(f"kept {work}")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent._demo.local", description=__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--layers", type=int, default=40,
                        help="layers per variant (40: about 300 MiB in all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    return run(args.seed, args.layers, args.keep)


if __name__ == "__main__":
    sys.exit(main())
