"""ALiBi slopes against the closed form and the 12-head list of MODEL.md; the bias block."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from bilingual.alibi import alibi_slopes, bias_block


@pytest.mark.parametrize("heads", [8, 16])
def test_power_of_two_heads_closed_form(heads):
    expected = [2 ** (-8 * h / heads) for h in range(1, heads + 1)]
    np.testing.assert_allclose(alibi_slopes(heads), expected, rtol=1e-7)


def test_twelve_heads_list_from_the_spec():
    expected = [2 ** -e for e in (1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)]
    np.testing.assert_allclose(alibi_slopes(12), expected, rtol=1e-7)


def test_twelve_heads_closed_form():
    c = 2 ** math.floor(math.log2(12))
    first = [2 ** (-8 * h / c) for h in range(1, c + 1)]
    extra = [2 ** (-8 * h / (2 * c)) for h in range(1, 2 * c + 1)][0::2][: 12 - c]
    np.testing.assert_allclose(alibi_slopes(12), first + extra, rtol=1e-7)


def test_six_heads():
    np.testing.assert_allclose(alibi_slopes(6), [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3], rtol=1e-7)


def test_bias_is_symmetric_and_zero_on_the_diagonal():
    slopes = jnp.asarray(alibi_slopes(4))
    pos = jnp.arange(7)
    bias = np.asarray(bias_block(slopes, pos, pos))
    assert bias.shape == (4, 7, 7)
    np.testing.assert_array_equal(bias, np.transpose(bias, (0, 2, 1)))
    np.testing.assert_array_equal(np.diagonal(bias, axis1=1, axis2=2), 0)
    assert bias[0, 0, 3] == pytest.approx(-3 * 2 ** -2)


def test_bias_block_from_offsets_equals_slice_of_full_bias():
    slopes = jnp.asarray(alibi_slopes(12))
    full = np.asarray(bias_block(slopes, jnp.arange(20), jnp.arange(20)))
    block = np.asarray(bias_block(slopes, jnp.arange(5, 9), jnp.arange(12, 20)))
    np.testing.assert_array_equal(block, full[:, 5:9, 12:20])
