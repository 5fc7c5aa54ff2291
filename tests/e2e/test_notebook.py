"""examples/quickstart.ipynb, run top to bottom in a real kernel against a live server."""

from __future__ import annotations

import io
import json
import os
import pathlib

import pandas as pd
import pytest

from tests.conftest import REPO, ROOT_AK, ROOT_SK
from tests.e2e.test_client import jobs_server_running

pytestmark = pytest.mark.sandbox

NOTEBOOK = os.path.join(REPO, "examples", "quickstart.ipynb")


def test_quickstart_notebook_runs_and_its_numbers_are_right(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: pathlib.Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    with jobs_server_running() as server:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MANTA_DATA"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MANTA_URL", server.url)  # the kernel inherits the environment
        monkeypatch.setenv("MANTA_ACCESS_KEY", ROOT_AK)
        monkeypatch.setenv("MANTA_SECRET_KEY", ROOT_SK)

        nb = nbformat.read(NOTEBOOK, as_version=4)
        original_cells = len(nb.cells)
        nb.cells.append(nbformat.v4.new_code_cell(
            'print("RESULT", monthly.to_json(orient="records"))'))
        NotebookClient(nb, timeout=180, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()

        # what the job computed, as the notebook's DataFrame
        printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
        got = pd.DataFrame(json.loads(printed.split("RESULT ", 1)[1]))

        # the same numbers recomputed here, from the objects the notebook uploaded
        s3 = server.client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
            Bucket="sensors", Prefix="readings/") for o in page.get("Contents", [])]
        assert len(keys) == 365
        readings = pd.concat(pd.read_csv(io.BytesIO(s3.get_object(Bucket="sensors", Key=k)["Body"].read()))  # type: ignore[attr-defined]
                             for k in keys)
        readings["month"] = readings["timestamp"].str[:7]
        expected = (readings.groupby(["month", "sensor"])["temperature"].agg(["mean", "count"])
                    .reset_index().sort_values(["month", "sensor"]).reset_index(drop=True))

    got = got.sort_values(["month", "sensor"]).reset_index(drop=True)
    assert len(got) == 12 * 3
    assert got["month"].tolist() == expected["month"].tolist()
    assert got["sensor"].tolist() == expected["sensor"].tolist()
    assert got["readings"].tolist() == expected["count"].tolist()
    assert sum(got["readings"]) == 365 * 24 * 3
    assert (got["mean_temperature"] - expected["mean"]).abs().max() < 1e-3

    # the plot cell drew a picture, and no cell of the notebook failed
    code_cells = [c for c in nb.cells[:original_cells] if c.cell_type == "code"]
    plot_cell = next(c for c in code_cells if "plt.show()" in c.source)
    assert any("image/png" in o.get("data", {}) for o in plot_cell.outputs)
    assert not [o for c in code_cells for o in c.outputs if o.output_type == "error"]
