"""examples/quickstart.ipynb, run top to bottom in a real kernel against a live server, as a
user opens it in Jupyter: from its own directory (examples/), nothing exported, the server and
keys found in the profile `manta config set` wrote (as ./run.sh does)."""

from __future__ import annotations

import io
import json
import os
import pathlib

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.e2e.test_client import jobs_server_running
from tests.e2e.test_profiles import clean_env, write_profile

pytestmark = pytest.mark.sandbox

EXAMPLES = os.path.join(REPO, "examples")
NOTEBOOK = os.path.join(EXAMPLES, "quickstart.ipynb")


def files_under(path: str) -> set[str]:
    return {os.path.relpath(os.path.join(top, name), path)
            for top, dirs, files in os.walk(path) for name in dirs + files}


def test_quickstart_notebook_runs_and_its_numbers_are_right(tmp_path: pathlib.Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    with jobs_server_running() as server:
        home = tmp_path / "home"
        home.mkdir()
        env = clean_env(HOME=str(home))  # no MANTA_*/AWS_* variable; ~/.config and ~/.aws empty
        write_profile(env, str(tmp_path), server.url)

        nb = nbformat.read(NOTEBOOK, as_version=4)
        original_cells = len(nb.cells)
        nb.cells.append(nbformat.v4.new_code_cell(
            'print("SOURCE", client.settings.sources["access_key"])\n'
            'print("RESULT", monthly.to_json(orient="records"))'))
        before = files_under(EXAMPLES)
        NotebookClient(nb, timeout=180, kernel_name="python3",
                       resources={"metadata": {"path": EXAMPLES}}).execute(env=env)
        assert files_under(EXAMPLES) == before  # the notebook leaves nothing behind

        # what the job computed, as the notebook's DataFrame
        printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
        got = pd.DataFrame(json.loads(printed.split("RESULT ", 1)[1]))
        assert f"SOURCE {home}/.config/manta/config [default]\n" in printed  # keys from the profile

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
