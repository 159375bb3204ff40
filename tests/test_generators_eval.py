"""Table 2's mode/mean analysis on hand-checked cases."""

import numpy as np

from benchmark.generators_eval import mode_mean_analysis


def test_identical_samples_have_no_spread_and_match_the_mean():
    e = np.eye(3)
    samples = np.stack([np.stack([e[0]] * 4), np.stack([e[1]] * 4)])  # (2 impressions, 4 samples, 3)
    out = mode_mean_analysis({"diffusion": samples}, references={"ar_mse": e[[0, 1]]}, targets=e[[0, 2]], centroids=e[[0, 1]])
    assert out["spread"] == {"diffusion": 0.0}
    assert out["cos_target"]["diffusion_sample"] == out["cos_target"]["diffusion_mean"] == 0.5  # (1 + 0) / 2
    assert out["cos_centroid"]["ar_mse"] == 1.0 and out["with_centroid"] == 2



def test_identical_draws_a_rounding_step_past_unit_length_have_no_negative_spread():
    # float32 normalisation can leave a norm just above 1 (1.00000012 here), so 1 - cos is -2.4e-7:
    # a distance cannot be negative (seen on a collapsed x0 generator's draws, tests/test_cli.py)
    v = np.array([np.float32(1.0000001), 0.0], dtype=np.float32)
    assert 1 - v @ v < 0
    out = mode_mean_analysis({"diffusion_x0": np.stack([v, v, v])[None]}, references={}, targets=v[None],
                             centroids=v[None])
    assert out["spread"] == {"diffusion_x0": 0.0}

def test_samples_around_a_centroid_are_farther_from_it_than_their_mean():
    # two opposite modes at +-45 degrees from the centroid (1, 0): each sample has cosine 0.707, their
    # normalised mean lies exactly on the centroid (cosine 1), and the pairwise distance is 1 - cos 90 = 1
    s = np.array([[[1.0, 1.0], [1.0, -1.0]]]) / np.sqrt(2)
    out = mode_mean_analysis({"diffusion": s}, references={"ar_mse": np.array([[1.0, 0.0]])}, targets=np.array([[1.0, 0.0]]),
                             centroids=np.array([[1.0, 0.0]]))
    assert np.isclose(out["spread"]["diffusion"], 1.0)
    assert np.isclose(out["cos_centroid"]["diffusion_sample"], np.sqrt(0.5))
    assert np.isclose(out["cos_centroid"]["diffusion_mean"], 1.0)


def test_impressions_without_a_centroid_are_left_out_of_the_centroid_cosine():
    s = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    out = mode_mean_analysis({"flow": s}, references={"u": s[:, 0]}, targets=s[:, 0], centroids=np.array([[1.0, 0.0], [0.0, 0.0]]))
    assert out["with_centroid"] == 1 and out["cos_centroid"]["flow_sample"] == 1.0
