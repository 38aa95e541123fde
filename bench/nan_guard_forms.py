"""Where the NaN check's cost comes from on XLA:CPU: ways to keep a non-finite update out (issue 10).

The toy step of ``bench/trainer_overhead.py`` (MLP 16-64-64-1, batch 64, Adam) as hand-written
donated ``jax.jit`` functions, timed interleaved (median of 5 x 2000 steps), ratio to ``plain``:

* ``plain``: no check;
* ``finite_only``: the finiteness reduction of loss and gradients computed, gating nothing;
* ``cond_loss_only``: ``lax.cond`` on ``isfinite(loss)`` around the optimizer update;
* ``cond_around``: ``lax.cond`` on loss and gradients around the update (the trainer's form);
* ``cond_select``: the update computed, then a ``lax.cond`` choosing the old or the new state;
* ``where_select``: the same with ``jnp.where`` per leaf (``optax.apply_if_finite``'s form);
* ``zero_updates``: non-finite gradients and updates zeroed elementwise.

    PYTHONPATH=. python bench/nan_guard_forms.py
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

SIZES = (16, 64, 64, 1)
TX = optax.adam(1e-3)


def init_params(key):
    pairs = zip(SIZES[:-1], SIZES[1:], strict=True)
    return [(0.1 * jax.random.normal(jax.random.fold_in(key, i), (a, b)), jnp.zeros(b)) for i, (a, b) in enumerate(pairs)]


def loss_fn(params, x, y):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return jnp.mean((h[:, 0] - y) ** 2)


def all_finite(loss, grads):
    return jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))


def apply(params, opt_state, grads):
    updates, opt_state = TX.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _step(guard):
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        new_params, new_opt = guard(params, opt_state, loss, grads)
        return new_params, new_opt, loss

    return step


def plain(p, o, loss, g):
    return apply(p, o, g)


def finite_only(p, o, loss, g):
    new_p, new_o = apply(p, o, g)
    return jax.tree.map(lambda t: t + 0 * all_finite(loss, g), new_p), new_o


def cond_loss_only(p, o, loss, g):
    return jax.lax.cond(jnp.isfinite(loss), lambda a: apply(*a), lambda a: (a[0], a[1]), (p, o, g))


def cond_around(p, o, loss, g):
    return jax.lax.cond(all_finite(loss, g), lambda a: apply(*a), lambda a: (a[0], a[1]), (p, o, g))


def cond_select(p, o, loss, g):
    new = apply(p, o, g)
    return jax.lax.cond(all_finite(loss, g), lambda: new, lambda: (p, o))


def where_select(p, o, loss, g):
    ok = all_finite(loss, g)
    new = apply(p, o, g)
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, (p, o))


def zero_updates(p, o, loss, g):
    ok = all_finite(loss, g)
    g = jax.tree.map(lambda t: jnp.where(ok, t, 0.0), g)
    updates, o = TX.update(g, o, p)
    return optax.apply_updates(p, jax.tree.map(lambda t: jnp.where(ok, t, 0.0), updates)), o


def main() -> None:
    key = jax.random.key(0)
    x, y = jax.random.normal(key, (64, 16)), jax.random.normal(jax.random.fold_in(key, 1), (64,))
    guards = [plain, finite_only, cond_loss_only, cond_around, cond_select, where_select, zero_updates]
    steps = {g.__name__: _step(g) for g in guards}
    states = {}
    for name, step in steps.items():  # compile
        params = init_params(key)
        states[name] = step(params, TX.init(params), x, y)[:2]
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(5):
        for name, step in steps.items():
            params, opt_state = states[name]
            tic = time.perf_counter()
            for _ in range(2000):
                params, opt_state, _loss = step(params, opt_state, x, y)
            jax.block_until_ready(params)
            times[name].append((time.perf_counter() - tic) / 2000 * 1e6)
            states[name] = (params, opt_state)
    base = float(np.median(times["plain"]))
    for name, values in times.items():
        print(f"{name:15s} {np.median(values):7.1f} us/step  {np.median(values) / base:.2f}x")


if __name__ == "__main__":
    main()
