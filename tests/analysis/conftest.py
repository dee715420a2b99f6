import numpy as np
import pytest


@pytest.fixture(scope="session")
def phantoms_4mm(tmp_path_factory):
    """A dozen 4 mm phantom subjects written as a BIDS folder (uniform ages, 2 sites)."""
    from flowlet.data.phantom.cohort import write_phantom_cohort

    out = tmp_path_factory.mktemp("phantoms") / "bids"
    write_phantom_cohort(out, 12, age_hist="uniform", voxel_size=4, sites=2, seed=3, progress=False)
    return out


@pytest.fixture(scope="session")
def phantom_cohort(phantoms_4mm):
    from flowlet.data.cohort import load_cohort

    return load_cohort(phantoms_4mm)


@pytest.fixture(scope="session")
def phantom_arrays(phantom_cohort):
    from flowlet.data.cohort import read_image

    table = phantom_cohort.table
    return [np.asarray(read_image(p).data) for p in table["path"]]
