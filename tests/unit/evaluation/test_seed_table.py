"""bireco.evaluation.seed_table: the per-seed table every multi-seed experiment reports with."""

from bireco.evaluation.seed_table import mean_sd, seed_row, seed_table_head


def test_a_row_has_a_cell_per_seed_and_the_mean_and_sample_sd_of_those_it_has():
    assert seed_table_head([1, 2, 42]) == [
        "| run | seed 1 | seed 2 | seed 42 | mean ± sd |",
        "|---|---|---|---|---|",
    ]
    assert (
        seed_row("Anchor", {1: 50.0, 42: 60.0}, [1, 2, 42]) == "| Anchor | 50.00 | – | 60.00 | 55.00 ± 7.07 |"
    )


def test_a_delta_row_signs_its_cells_and_its_mean():
    assert seed_row("Δ", {1: 5.0, 2: -2.0}, [1, 2], fmt="{:+.2f}") == "| Δ | +5.00 | -2.00 | +1.50 ± 4.95 |"


def test_one_value_or_a_shared_start_claims_no_spread():
    assert mean_sd([3.0]) == "3.00"
    assert seed_row("start", {1: 20.0, 2: 20.0}, [1, 2], spread=False) == "| start | 20.00 | 20.00 | 20.00 |"
