"""Offline batch scoring: every row of IDX / NPZ / CSV / Parquet files through a checkpoint, each
row's prediction, log p(x), gate scores and decision written to Parquet.

The model math is the service's (``inference.runtime.ModelRuntime``: torch or ONNX Runtime, the
gate's decision and eq. 10's gated probabilities included), so a file scored here gets the answers
the service would give. Two engines:

- ``ray`` (the default): Ray Data. CSV and Parquet are read by Ray's readers (in parallel, lazily);
  IDX and NPZ by ``training.data.files`` in the driver. ``map_batches`` runs a pool of actors, each
  loading the checkpoint once and holding one CPU (on a local Ray, the CPUs minus one: the read and
  write tasks need one); rows keep their input order. A local Ray by default, ``--address`` for an
  existing cluster.
- ``local``: the same reading and the same scoring function in a plain loop in this process (small
  files, or no Ray installed).

Inputs: IDX and NPZ hold images (anything that reshapes to the model's input shape). CSV and Parquet
rows hold the flattened input, one numeric column per value in order, or (Parquet) one list column
``x``; the columns ``id`` and ``label``, if present, are carried to the output untouched.

Output columns, the same for every input kind: ``source`` (the input file), ``row`` (the index in an
IDX / NPZ file, else -1), ``id`` (text, "" when the input has none) and ``label`` (float, NaN when
none) carried from the input, then the service's per-instance fields (``log_px`` in nats,
``bits_per_dim``, ``accepted``, ``p_value``, ``rejected_by``, ``instance_score``, ``score_<name>``,
``p_value_<name>``) and the head's: ``prediction``, ``probability_<k>`` and ``model_probability_<k>``
per class k (the manifest's class order) for classification; ``mean``, ``variance``, ``model_mean``,
``model_variance`` for regression.
"""
from __future__ import annotations

import csv
import glob
import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet
from tqdm.auto import tqdm

from inference.inputs import InferenceInput
from inference.runtime import ModelRuntime
from models.checkpoint import read_manifest
from training.data.files import read_images
from training.data.registry import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".gz", ".idx", ".npz", "ubyte")
TABLE_SUFFIXES = (".csv", ".parquet")
CARRIED = ("id", "label")
PER_CLASS = {"probabilities": "probability", "model_probabilities": "model_probability"}


def input_files(pattern: str) -> list[Path]:
    """The files a path or glob names, sorted; ``DataError`` when none, or of an unknown kind."""
    files = sorted(Path(name) for name in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
    files = [path for path in files if path.is_file()]
    if not files:
        raise DataError(f"no input files match {pattern}")
    unknown = [path.name for path in files if not path.name.endswith(IMAGE_SUFFIXES + TABLE_SUFFIXES)]
    if unknown:
        raise DataError(f"cannot score {unknown[0]}: inputs are IDX (.gz, .idx, -ubyte), .npz, .csv or .parquet files")
    return files


def image_table(path: Path, input_shape: tuple[int, ...]) -> pa.Table:
    """An IDX / NPZ file as a table: ``source``, ``row`` and ``x`` (each image flattened);
    ``DataError`` when its images do not hold the model's number of values."""
    images = read_images(path)
    flat = images.reshape(len(images), -1)
    if flat.shape[1] != int(np.prod(input_shape)):
        raise DataError(f"{path} holds images of {flat.shape[1]} values; the model takes {int(np.prod(input_shape))} (shape {list(input_shape)})")
    return pa.table({
        "source": pa.array([str(path)] * len(flat)),
        "row": pa.array(np.arange(len(flat))),
        "x": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]),
    })


def local_table(path: Path, input_shape: tuple[int, ...]) -> pa.Table:
    """Any input file as a table (the local engine's reader)."""
    if path.name.endswith(IMAGE_SUFFIXES):
        return image_table(path, input_shape)
    try:
        table = pa.parquet.read_table(path) if path.suffix == ".parquet" else pa.csv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    return table.append_column("source", pa.array([str(path)] * len(table)))


def check_columns(files: list[Path], input_shape: tuple[int, ...]) -> None:
    """Before any work: every CSV / Parquet file's feature columns (its header or schema) number the
    model's input values; ``DataError`` naming the file otherwise. (IDX / NPZ rows are checked as
    they are read, and every batch again by the scorer.)"""
    size = int(np.prod(input_shape))
    for path in files:
        if path.suffix == ".csv":
            with open(path, encoding="utf-8", errors="replace", newline="") as handle:
                names = next(csv.reader(handle), [])
        elif path.suffix == ".parquet":
            try:
                names = pa.parquet.ParquetFile(path).schema_arrow.names
            except (pa.ArrowInvalid, OSError) as error:
                raise DataError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
        else:
            continue
        count = len([name for name in names if name not in ("source", "row", *CARRIED)])
        if "x" not in names and count != size:
            raise DataError(f"{path} has {count} feature columns; the model takes {size} values (shape {list(input_shape)})")


def canonical(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Any input batch as the columns every later step reads, the same for every input kind (so
    batches and output files share one schema): ``source``; ``row`` (-1 when the input has none);
    ``id`` (text, "" when none); ``label`` (float, NaN when none); ``x`` ``(N, D)`` float32, from the
    ``x`` column or else every other column in order."""
    if "x" in batch:
        values = batch["x"]
        x = np.stack(values) if values.dtype == object else values
    else:
        columns = [name for name in batch if name not in ("source", "row", *CARRIED)]
        try:
            x = np.stack([np.asarray(batch[name], dtype=np.float32) for name in columns], axis=1)
        except ValueError:
            text = next(name for name in columns if not np.issubdtype(np.asarray(batch[name]).dtype, np.number))
            raise DataError(f"column {text!r} is not numeric; input columns must hold the model's input values (or be id / label)") from None
    x = np.array(x, dtype=np.float32).reshape(len(x), -1)  # a writable copy (torch warns on read-only arrays)
    count = len(x)
    return {
        "source": np.asarray(batch["source"]).astype(str),
        "row": np.asarray(batch["row"], dtype=np.int64) if "row" in batch else np.full(count, -1, dtype=np.int64),
        "id": np.asarray(batch["id"]).astype(str) if "id" in batch else np.full(count, "", dtype=object),
        "label": np.asarray(batch["label"], dtype=np.float64) if "label" in batch else np.full(count, np.nan),
        "x": x,
    }


class Scorer:
    """Loads the checkpoint once (one per Ray actor), then scores canonical batches (``canonical``)."""

    def __init__(self, checkpoint: str, backend: str = "auto", threads: int | None = None):
        self.runtime = ModelRuntime.load(checkpoint, "cpu", backend, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shape = self.runtime.input_shape
        x = batch["x"]
        if x.shape[1] != int(np.prod(shape)):
            raise DataError(f"input rows hold {x.shape[1]} values; the model takes {int(np.prod(shape))} (shape {list(shape)})")
        prediction = self.runtime.predict(InferenceInput(np.ascontiguousarray(x).reshape(len(x), *shape)))
        columns = {name: batch[name] for name in ("source", "row", *CARRIED)}
        for name, values in prediction.columns().items():
            name = "prediction" if name == "label" else name
            if values.ndim == 2:  # per-class probabilities: one column each
                columns.update({f"{PER_CLASS[name]}_{k}": values[:, k] for k in range(values.shape[1])})
            elif name == "rejected_by":
                columns[name] = np.array(["" if reason is None else reason for reason in values])
            else:
                columns[name] = values
        return columns


def score_local(files: list[Path], checkpoint: str, output: Path, backend: str, batch_size: int, progress: bool) -> int:
    """The plain loop: read each file, score it batch by batch, write one Parquet file."""
    scorer = Scorer(checkpoint, backend)
    writer, rows = None, 0
    tables = [local_table(path, scorer.runtime.input_shape) for path in files]
    output.mkdir(parents=True, exist_ok=True)
    with tqdm(total=sum(len(t) for t in tables), desc="scoring", unit="row", disable=not progress) as bar:
        for table in tables:
            for batch in table.to_batches(max_chunksize=batch_size):
                columns = canonical({name: _numpy(batch.column(name)) for name in batch.schema.names})
                scored = pa.table(scorer(columns))
                if writer is None:
                    writer = pa.parquet.ParquetWriter(output / "part-0.parquet", scored.schema)
                writer.write_table(scored)
                rows += len(scored)
                bar.update(len(scored))
    if writer is not None:
        writer.close()
    return rows


def _numpy(column: pa.Array) -> np.ndarray:
    """An Arrow column as numpy; list columns (images, Parquet ``x``) as ``(N, D)``."""
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy().reshape(len(column), -1)
    if pa.types.is_list(column.type):
        return np.asarray(column.to_pylist(), dtype=np.float32)
    return column.to_numpy(zero_copy_only=False)


def ray_actors(requested: int | None, address: str | None) -> tuple[int, float]:
    """Scoring actors and the CPUs each reserves. On a local Ray: by default one per usable CPU (each
    runs one thread), reserving together all CPUs but one, which Ray Data's read and write tasks need
    (with none left the pipeline would stall). On a cluster: ``requested`` (default 1), one CPU each."""
    from models.device import usable_cpus

    if address is not None:
        return requested or 1, 1.0
    actors = requested or usable_cpus()
    return actors, max(1, usable_cpus() - 1) / actors


def score_ray(files: list[Path], checkpoint: str, output: Path, backend: str, batch_size: int, actors: int | None, address: str | None) -> int:
    """Ray Data: read, ``map_batches`` on an actor pool (``ray_actors``; one model each), write
    Parquet files into ``output`` in input order."""
    import ray

    ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        return _ray_pipeline(ray, files, checkpoint, output, backend, batch_size, *ray_actors(actors, address))
    except Exception as error:  # a DataError inside an actor reaches here wrapped by Ray
        message = _data_error(error)
        if message is None:
            raise
        raise DataError(message) from None
    finally:
        ray.shutdown()


def _data_error(error: Exception) -> str | None:
    """The message of a ``DataError`` raised inside a Ray actor (Ray re-raises it wrapped, as text)."""
    found = re.search(r"DataError: (.+)", str(error))
    return found.group(1).strip() if found else None


def _ray_pipeline(ray, files: list[Path], checkpoint: str, output: Path, backend: str, batch_size: int, actors: int, cpus_per_actor: float) -> int:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    images = [path for path in files if path.name.endswith(IMAGE_SUFFIXES)]
    csvs = [str(path) for path in files if path.suffix == ".csv"]
    parquets = [str(path) for path in files if path.suffix == ".parquet"]
    parts = []
    if images:
        shape = tuple(read_manifest(checkpoint).input_shape)
        parts.append(ray.data.from_arrow([image_table(path, shape) for path in images]))
    if csvs:
        parts.append(ray.data.read_csv(csvs, include_paths=True).rename_columns({"path": "source"}))
    if parquets:
        parts.append(ray.data.read_parquet(parquets, include_paths=True).rename_columns({"path": "source"}))
    parts = [part.map_batches(canonical, batch_format="numpy") for part in parts]
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    scored = dataset.map_batches(
        Scorer, fn_constructor_kwargs={"checkpoint": str(Path(checkpoint).resolve()), "backend": backend, "threads": 1},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
    )
    scored.write_parquet(str(output.resolve()))
    return sum(pa.parquet.ParquetFile(path).metadata.num_rows for path in output.glob("*.parquet"))


def score(pattern: str, checkpoint: str, output: str, engine: str = "ray", backend: str = "auto", batch_size: int = 256,
          actors: int | None = None, address: str | None = None, progress: bool = True) -> dict:
    """Score the files ``pattern`` names into the Parquet folder ``output`` (which must not exist;
    it appears only once complete); returns rows, seconds and rows/s."""
    manifest = read_manifest(checkpoint)  # a damaged checkpoint stops here with its one-line error
    files = input_files(pattern)
    check_columns(files, tuple(manifest.input_shape))
    out = Path(output)
    if out.exists():
        raise DataError(f"output {out} exists; choose a new folder (scoring never overwrites)")
    started = time.perf_counter()
    partial = out.with_name(f".{out.name}.partial")  # renamed into place when complete
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if engine == "local":
            rows = score_local(files, checkpoint, partial, backend, batch_size, progress)
        else:
            rows = score_ray(files, checkpoint, partial, backend, batch_size, actors, address)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    seconds = time.perf_counter() - started
    return {"rows": rows, "files": len(files), "seconds": seconds, "rows_per_s": rows / seconds, "output": str(out)}
