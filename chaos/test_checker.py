#!/usr/bin/env python3
"""Tests of chaos/checker.py: legal histories pass, planted defects are
caught with the right kind, borderline-legal histories are not flagged.

Histories are built with `Sim`, a sequential model of the service: the
test calls operations in the order they take effect (their linearization)
and gives each one the window [invoke, complete] the client saw; the model
answers from its state as the real service would. Every history it
produces is legal by construction, and a defect is planted by editing an
answer or the final state afterwards.

Run from the repository root: python3 -m unittest chaos/test_checker.py
(or python3 chaos/test_checker.py).
"""

import contextlib
import io
import itertools
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checker  # noqa: E402


def err(code):
    return {"error": {"code": code, "message": f"{code} (test)"}}


EDGE_LOST = {502: "bad_gateway", 504: "gateway_timeout"}


class Sim:
    """A sequential model of the service that records a history."""

    def __init__(self):
        self.ops = []
        self.coupons = {}  # name -> {"amount", "remaining", "holders": [users]}
        self.release_rows = []
        self.ids = itertools.count(1)
        self.last = -math.inf
        self.past = {}  # coupon -> [(instant, remaining, holders)] after each change
        self.stale_answers = 0

    # -- plumbing

    def _at(self, invoke, complete, at, lost):
        if at is None:
            at = max((invoke + complete) / 2, self.last)
        assert invoke <= at, "an effect cannot precede its invoke"
        assert lost is not None or at <= complete, "a definite answer comes after the effect"
        assert at >= self.last, "operations must be given in linearization order"
        self.last = at
        return at

    def _changed(self, coupon):
        c = self.coupons[coupon]
        self.past.setdefault(coupon, []).append((self.last, c["remaining"], set(c["holders"])))

    def _remembered(self, coupon, user, lag):
        """What a server's sold-out memory may answer, up to `lag` seconds
        behind: 409 or 400 when the coupon was sold out at some instant of
        [now - lag, now], else None."""
        states = self.past.get(coupon, [])
        since = self.last - lag
        window = [st for st in states if st[0] > since]
        earlier = [st for st in states if st[0] <= since]
        if earlier:
            window.insert(0, earlier[-1])
        for _, remaining, holders in window:
            if remaining == 0:
                return (409, err("already_claimed")) if user in holders else (400, err("out_of_stock"))
        return None

    def _finish(self, d, status, body, lost, target, faulted):
        d.update(id=next(self.ids), target=target, faulted_target=faulted, error=None)
        if lost is None:
            d.update(status=status, body=body)
        elif lost == 503:
            d.update(status=503, body=err("database_unavailable"))
        elif lost in EDGE_LOST:
            d.update(status=lost, body=err(EDGE_LOST[lost]))
        elif lost == 0 or lost == "sql_unknown":
            d.update(status=None, body=None)
        else:
            d.update(status=None, body=None, error=lost)
        self.ops.append(d)
        return d

    def _base(self, op, invoke, complete, client, **fields):
        d = {"op": op, "client": client, "invoke": invoke, "complete": complete}
        d.update(fields)
        return d

    # -- operations (call them in the order they take effect)

    def create(self, coupon, amount, invoke, complete, at=None, lost=None, effect=True,
               target="edge", client=0, faulted=False):
        self._at(invoke, complete, at, lost)
        d = self._base("create", invoke, complete, client, coupon=coupon, amount=amount)
        if coupon in self.coupons:
            return self._finish(d, 409, err("coupon_exists"), lost, target, faulted)
        if lost is None or effect:
            self.coupons[coupon] = {"amount": amount, "remaining": amount, "holders": []}
            self._changed(coupon)
        body = {"name": coupon, "amount": amount, "remaining_amount": amount, "claimed_by": []}
        return self._finish(d, 201, body, lost, target, faulted)

    def claim(self, coupon, user, invoke, complete, at=None, lost=None, effect=True,
              target="edge", client=0, faulted=False, memory=None):
        """`memory`: answer from a sold-out memory up to that many seconds
        behind, as docs/architecture.md allows."""
        self._at(invoke, complete, at, lost)
        d = self._base("claim", invoke, complete, client, coupon=coupon, user=user)
        c = self.coupons.get(coupon)
        if c is None:
            return self._finish(d, 404, err("coupon_not_found"), lost, target, faulted)
        if user in c["holders"]:
            return self._finish(d, 409, err("already_claimed"), lost, target, faulted)
        if c["remaining"] == 0:
            return self._finish(d, 400, err("out_of_stock"), lost, target, faulted)
        stale = memory is not None and self._remembered(coupon, user, memory)
        if stale:
            self.stale_answers += 1
            return self._finish(d, *stale, lost, target, faulted)
        if lost is None or effect:
            c["remaining"] -= 1
            c["holders"].append(user)
            self._changed(coupon)
        body = {"user_id": user, "coupon_name": coupon, "remaining_amount": c["remaining"]}
        return self._finish(d, 200, body, lost, target, faulted)

    def release(self, coupon, user, invoke, complete, at=None, lost=None, effect=True,
                target="edge", client=0, faulted=False):
        self._at(invoke, complete, at, lost)
        d = self._base("release", invoke, complete, client, coupon=coupon, user=user)
        c = self.coupons.get(coupon)
        if c is None:
            return self._finish(d, 404, err("coupon_not_found"), lost, target, faulted)
        if user not in c["holders"]:
            return self._finish(d, 404, err("claim_not_found"), lost, target, faulted)
        if lost is None or effect:
            c["holders"].remove(user)
            c["remaining"] += 1
            self.release_rows.append([coupon, user])
            self._changed(coupon)
        body = {"coupon_name": coupon, "user_id": user, "remaining_amount": c["remaining"]}
        return self._finish(d, 200, body, lost, target, faulted)

    def get(self, coupon, invoke, complete, at=None, lost=None, target="edge", client=0,
            faulted=False):
        self._at(invoke, complete, at, lost)
        d = self._base("get", invoke, complete, client, coupon=coupon)
        c = self.coupons.get(coupon)
        if c is None:
            return self._finish(d, 404, err("coupon_not_found"), lost, target, faulted)
        body = {"name": coupon, "amount": c["amount"], "remaining_amount": c["remaining"],
                "claimed_by": list(c["holders"])}
        return self._finish(d, 200, body, lost, target, faulted)

    def list(self, invoke, complete, at=None, target="edge", client=0):
        self._at(invoke, complete, at, None)
        d = self._base("list", invoke, complete, client)
        body = {"coupons": [{"name": n, "amount": c["amount"], "remaining_amount": c["remaining"]}
                            for n, c in sorted(self.coupons.items())]}
        return self._finish(d, 200, body, None, target, False)

    def restock(self, coupon, add, invoke, complete, at=None, lost=None, effect=True,
                count=True):
        self._at(invoke, complete, at, lost)
        d = self._base("sql_restock", invoke, complete, -1, coupon=coupon, add=add)
        c = self.coupons.get(coupon)
        n = 0
        if c is not None and (lost is None or effect):
            c["amount"] += add
            c["remaining"] += add
            n = 1
            self._changed(coupon)
        return self._finish(d, 0, {"updated": n} if count else None,
                            None if lost is None else "sql_unknown", "sql", False)

    def delete(self, coupon, user, invoke, complete, at=None, lost=None, effect=True):
        self._at(invoke, complete, at, lost)
        d = self._base("sql_delete_claim", invoke, complete, -1, coupon=coupon, user=user)
        c = self.coupons.get(coupon)
        n = 0
        if c is not None and user in c["holders"] and (lost is None or effect):
            c["holders"].remove(user)
            c["remaining"] += 1
            n = 1
            self._changed(coupon)
        return self._finish(d, 0, {"deleted": n}, None if lost is None else "sql_unknown",
                            "sql", False)

    # -- the end

    def final(self):
        return {
            "coupons": {n: {"amount": c["amount"], "remaining_amount": c["remaining"]}
                        for n, c in self.coupons.items()},
            "claims": [[n, u] for n, c in self.coupons.items() for u in c["holders"]],
            "releases": [list(r) for r in self.release_rows],
        }

    start = None

    def check(self, final=None, **kw):
        return checker.check(self.ops, self.final() if final is None else final,
                             self.start, **kw)


def kinds(anomalies):
    return sorted({a["kind"] for a in anomalies})


def random_legal(seed, n_ops=3000, n_coupons=12, window=0.4, at_start=False, memory=None):
    """A legal history with heavy overlap: effects at increasing instants,
    each operation's window drawn around its instant; indeterminate
    operations (503, no answer, an edge 502/504) that did or did not take
    effect, some of them after the client gave up."""
    rng = random.Random(seed)
    sim = Sim()
    t = 0.0
    names = [f"s{seed}-c{i}" for i in range(n_coupons)]
    users = [f"u{i}" for i in range(40)]

    def win(at):
        return at - rng.uniform(0, window), at + rng.uniform(0, window)

    def lost():
        r = rng.random()
        if r < 0.9:
            return None
        return rng.choice([503, "timeout", 502, 504, 503, "reset"])

    late = names[-2:]  # created during the run, maybe twice, maybe without an answer
    start = {}
    if at_start:  # the first two exist before the schedule, some units held
        for name in names[:2]:
            holders = rng.sample(users, 3)
            sim.coupons[name] = {"amount": 4, "remaining": 1, "holders": holders}
            sim._changed(name)
            start[name] = {"amount": 4, "remaining_amount": 1,
                           "claims": [[name, u] for u in holders]}
            sim.release_rows.append([name, "someone-before"])
    sim.start = start
    for name in names[2:-2] if at_start else names[:-2]:
        t += 0.01
        inv, comp = win(t)
        sim.create(name, rng.choice([0, 1, 3, 5, 20]), inv, comp, at=t)
    for i in range(n_ops):
        if i % (n_ops // 6 + 1) == 0:
            t += 0.01
            name = rng.choice(late)
            inv, comp = win(t)
            how = lost()
            sim.create(name, rng.choice([1, 2]), inv, comp, at=t, lost=how,
                       effect=rng.random() < 0.5, faulted=how == "reset")
        t += rng.expovariate(200.0)
        name = rng.choice(names[:4] if rng.random() < 0.7 else names)
        user = rng.choice(users)
        inv, comp = win(t)
        kind = rng.random()
        how = lost()
        faulted = how in ("reset",)
        target = "edge" if how in (502, 504) or rng.random() < 0.7 else f"replica-{rng.randint(1, 3)}"
        effect = rng.random() < 0.5
        if how is not None and effect and kind < 0.75 and rng.random() < 0.3:
            comp = max(inv, t - rng.uniform(0, window))  # the client gave up before the effect
        if kind < 0.6:
            sim.claim(name, user, inv, comp, at=t, lost=how, effect=effect, target=target,
                      faulted=faulted, memory=memory if rng.random() < 0.5 else None)
        elif kind < 0.75:
            sim.release(name, user, inv, comp, at=t, lost=how, effect=effect, target=target,
                        faulted=faulted)
        elif kind < 0.92:
            sim.get(name, inv, comp, at=t, lost=how if how != "reset" else None,
                    target=target)
        elif kind < 0.95:
            sim.restock(name, rng.randint(1, 3), inv, comp, at=t,
                        lost="unknown" if how else None, effect=effect,
                        count=rng.random() < 0.5)
        elif kind < 0.98:
            sim.delete(name, user, inv, comp, at=t, lost="unknown" if how else None,
                       effect=effect)
        else:
            sim.list(inv, comp, at=t)
    return sim


# ---------------------------------------------------------------- legal histories


class LegalHistories(unittest.TestCase):
    def legal_sim(self):
        s = Sim()
        s.create("HOT", 2, 0.0, 0.1)
        s.create("BIG", 100, 0.0, 0.2)
        # A sold-out race: four users overlap on two units.
        s.claim("HOT", "a", 1.0, 1.5, at=1.1)
        s.claim("HOT", "b", 1.0, 1.6, at=1.2)
        s.claim("HOT", "c", 1.05, 1.4, at=1.3)   # out_of_stock: raced
        s.claim("HOT", "d", 1.1, 1.7, at=1.35)   # out_of_stock
        # The same user twice at once: one 200, one 409.
        s.claim("BIG", "x", 2.0, 2.3, at=2.1)
        s.claim("BIG", "x", 2.0, 2.4, at=2.2)
        # Indeterminate claims: one took effect (answer lost), one did not.
        s.claim("BIG", "y", 2.5, 2.6, at=2.55, lost=503, effect=True)
        s.claim("BIG", "z", 2.5, 2.6, at=2.55, lost="timeout", effect=False)
        s.claim("BIG", "w", 2.5, 2.6, at=2.9, lost=504, effect=True)  # committed after the 504
        # A GET overlapping claims.
        s.get("BIG", 2.7, 3.1, at=2.95)
        # A release, then the unit goes again; the released user claims again.
        s.release("HOT", "a", 3.0, 3.2, at=3.1)
        s.claim("HOT", "e", 3.15, 3.5, at=3.3)
        s.claim("HOT", "a", 3.4, 3.6, at=3.45)   # out_of_stock: e took it
        # A restock, claims after it.
        s.restock("HOT", 2, 4.0, 4.05)
        s.claim("HOT", "a", 4.1, 4.2)
        s.claim("HOT", "f", 4.1, 4.3)
        s.claim("HOT", "g", 4.1, 4.4)            # out_of_stock
        # An operator deletes a claim; a GET sees it.
        s.delete("BIG", "x", 5.0, 5.1)
        s.get("BIG", 5.2, 5.3)
        s.claim("BIG", "x", 5.4, 5.5)
        # A release answered 503 that took effect, one that did not.
        s.release("HOT", "f", 6.0, 6.1, lost=503, effect=True)
        s.release("HOT", "e", 6.2, 6.3, lost="timeout", effect=False)
        s.get("HOT", 6.5, 6.6)
        s.list(6.7, 6.8)
        # A replica killed while holding a request: reset, marked faulted.
        s.claim("BIG", "k", 7.0, 7.1, lost="reset", effect=False, target="replica-2", faulted=True)
        # Edge answers: 429 rate limited (no effect), 502 (maybe).
        d = s.claim("BIG", "r", 7.2, 7.3)
        s.ops.remove(d)
        s.coupons["BIG"]["holders"].remove("r")
        s.coupons["BIG"]["remaining"] += 1
        s.ops.append(dict(d, status=429, body=err("rate_limited")))
        s.claim("BIG", "q", 7.4, 7.5, lost=502, effect=False)
        return s

    def test_legal_history_passes(self):
        s = self.legal_sim()
        self.assertEqual(s.check(), [])
        self.assertEqual(s.check(freshness=0.0), [])

    def test_history_order_does_not_matter(self):
        s = self.legal_sim()
        ops = list(s.ops)
        random.Random(7).shuffle(ops)
        self.assertEqual(checker.check(ops, s.final()), [])

    def test_random_legal_histories_pass(self):
        for seed in range(12):
            s = random_legal(seed)
            for fresh in (1.0, 0.0):
                got = s.check(freshness=fresh)
                self.assertEqual(got, [], f"seed {seed} freshness {fresh}: "
                                 f"{[a['message'] for a in got[:3]]}")

    def test_random_legal_histories_with_a_lagging_sold_out_memory_pass(self):
        # Answers from a memory up to 1 s behind (the documented bound):
        # legal with the default freshness.
        strict = []
        for seed in range(6):
            s = random_legal(seed, n_ops=2000, window=0.3, memory=1.0)
            self.assertGreater(s.stale_answers, 10)
            got = s.check()
            self.assertEqual(got, [], f"seed {seed}: {[a['message'] for a in got[:3]]}")
            strict += s.check(freshness=0.0)
        # Judged as if every answer came from the database, some of those
        # lagging answers are stale, and nothing else is.
        self.assertTrue(strict)
        self.assertLessEqual(set(kinds(strict)), {"stale_out_of_stock", "stale_already_claimed"})

    def test_random_legal_histories_with_coupons_at_start_pass(self):
        for seed in range(4):
            s = random_legal(seed, n_ops=1500, at_start=True)
            for fresh in (1.0, 0.0):
                got = s.check(freshness=fresh)
                self.assertEqual(got, [], f"seed {seed}: {[a['message'] for a in got[:3]]}")

    def test_replayed_answers_are_copies(self):
        s = Sim()
        s.create("C", 2, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1, lost="timeout", effect=True)
        # The retry with the same Idempotency-Key gets the first answer again.
        d = s.claim("C", "a", 2.0, 2.1)            # 409 in the model
        d.update(status=200, replayed=True,
                 body={"user_id": "a", "coupon_name": "C", "remaining_amount": 1})
        s.claim("C", "b", 3.0, 3.1)
        self.assertEqual(s.check(freshness=0.0), [])
        del d["replayed"]                          # the same answers, not marked: a's claim
        s.ops[1].update(status=200, error=None,    # answered twice is a double claim
                        body={"user_id": "a", "coupon_name": "C", "remaining_amount": 1})
        self.assertIn("double_claim", kinds(s.check(freshness=0.0)))

    def test_coupons_at_start(self):
        s = Sim()
        s.coupons["OLD"] = {"amount": 3, "remaining": 1, "holders": ["p", "q"]}
        start = {"OLD": {"amount": 3, "remaining_amount": 1, "claims": [["OLD", "p"], ["OLD", "q"]]}}
        s.claim("OLD", "p", 1.0, 1.1)                  # 409: held from the start
        s.claim("OLD", "r", 1.2, 1.3)
        s.claim("OLD", "t", 1.4, 1.5)                  # out_of_stock
        s.release("OLD", "q", 2.0, 2.1)
        s.get("OLD", 2.2, 2.3)
        self.assertEqual(checker.check(s.ops, s.final(), start), [])
        # Without it the coupon is of unknown origin: only what needs no
        # complete history is checked, and that holds.
        self.assertEqual(checker.check(s.ops, s.final()), [])
        # A start that omits q's holding: q's release and p's holding come
        # from nowhere.
        start["OLD"]["claims"] = []
        got = kinds(checker.check(s.ops, s.final(), start))
        self.assertIn("unmatched_release", got)
        self.assertIn("phantom_claim", got)

    def test_fifty_thousand_operations_in_a_few_seconds(self):
        s = random_legal(99, n_ops=50000, n_coupons=100, window=0.05)
        t0 = time.monotonic()
        got = s.check()
        took = time.monotonic() - t0
        self.assertEqual(got, [])
        # Under a second on an idle machine; the margin is for a loaded CI.
        self.assertLess(took, 15.0, f"{len(s.ops)} operations took {took:.1f} s")


# ---------------------------------------------------------------- planted defects


class PlantedDefects(unittest.TestCase):
    def base(self):
        s = Sim()
        s.create("C", 3, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1)
        s.claim("C", "b", 1.2, 1.3)
        return s

    def assertCaught(self, anomalies, kind):
        self.assertIn(kind, kinds(anomalies), anomalies)
        for a in anomalies:
            self.assertTrue(a["message"] and isinstance(a["ops"], list))

    def test_lost_claim(self):
        s = self.base()
        f = s.final()
        f["claims"].remove(["C", "a"])
        f["coupons"]["C"]["remaining_amount"] += 1  # keep amount = remaining + claims
        got = s.check(final=f)
        self.assertEqual(kinds(got), ["lost_claim"])
        self.assertEqual(got[0]["ops"][0]["user"], "a")

    def test_claim_not_lost_when_an_indeterminate_release_may_follow(self):
        s = self.base()
        s.release("C", "a", 2.0, 2.1, lost="timeout", effect=True)
        self.assertEqual(s.check(), [])

    def test_double_claim_in_final_state(self):
        s = self.base()
        f = s.final()
        f["claims"].append(["C", "a"])
        f["coupons"]["C"]["remaining_amount"] -= 1
        self.assertCaught(s.check(final=f), "double_claim")

    def test_two_200_claims_without_release_between(self):
        s = self.base()
        d = s.claim("C", "a", 2.0, 2.1)           # 409 in a legal run
        d.update(status=200, body={"user_id": "a", "coupon_name": "C", "remaining_amount": 0})
        got = s.check()
        self.assertCaught(got, "double_claim")

    def test_two_200_claims_with_possible_release_between_are_legal(self):
        s = self.base()
        s.release("C", "a", 1.5, 1.6, lost=503, effect=True)
        s.claim("C", "a", 2.0, 2.1)
        self.assertEqual(s.check(), [])

    def test_stale_out_of_stock(self):
        s = self.base()                            # 1 unit surely free
        d = s.claim("C", "c", 2.0, 2.1)
        s.coupons["C"]["holders"].remove("c")
        s.coupons["C"]["remaining"] += 1
        d.update(status=400, body=err("out_of_stock"))
        got = s.check()
        self.assertEqual(kinds(got), ["stale_out_of_stock"])

    def test_stale_out_of_stock_after_a_completed_release(self):
        s = Sim()
        s.create("C", 1, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1)
        s.release("C", "a", 2.0, 2.1)
        d = s.claim("C", "b", 3.5, 3.6)           # sent 1.4 s after the release's 200
        s.coupons["C"]["holders"].remove("b")
        s.coupons["C"]["remaining"] += 1
        d.update(status=400, body=err("out_of_stock"))
        self.assertEqual(kinds(s.check()), ["stale_out_of_stock"])
        # Within the documented freshness bound (1 s) the same answer is legal.
        d.update(invoke=2.6, complete=2.7)
        self.assertEqual(s.check(), [])
        self.assertEqual(kinds(s.check(freshness=0.0)), ["stale_out_of_stock"])

    def test_stale_out_of_stock_after_a_restock(self):
        s = Sim()
        s.create("C", 0, 0.0, 0.1)
        s.restock("C", 2, 1.0, 1.1)
        d = s.claim("C", "a", 3.0, 3.1)
        s.coupons["C"]["holders"].remove("a")
        s.coupons["C"]["remaining"] += 1
        d.update(status=400, body=err("out_of_stock"))
        self.assertEqual(kinds(s.check()), ["stale_out_of_stock"])

    def test_stale_out_of_stock_when_final_state_settles_the_indeterminate(self):
        s = Sim()
        s.create("C", 1, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1, lost="timeout", effect=False)   # never took the unit
        d = s.claim("C", "b", 1.05, 1.2)
        s.coupons["C"]["holders"].remove("b")
        s.coupons["C"]["remaining"] += 1
        d.update(status=400, body=err("out_of_stock"))
        self.assertEqual(kinds(s.check()), ["stale_out_of_stock"])

    def test_stale_out_of_stock_despite_one_users_many_unanswered_claims(self):
        s = Sim()
        s.create("C", 3, 0.0, 0.1)
        for i in range(5):   # one user, five claims at once, no answer: one unit at most
            s.claim("C", "a", 1.0, 1.1, at=1.01 + i / 100, lost="timeout", effect=i == 0)
        s.claim("C", "b", 1.2, 1.3)
        d = s.claim("C", "c", 1.2, 1.4)
        s.coupons["C"]["holders"].remove("c")
        s.coupons["C"]["remaining"] += 1
        d.update(status=400, body=err("out_of_stock"))
        self.assertEqual(kinds(s.check()), ["stale_out_of_stock"])
        # With a release of a's between them, a could have taken two.
        s2 = Sim()
        s2.create("C", 3, 0.0, 0.1)
        s2.claim("C", "a", 1.0, 1.1, at=1.01, lost="timeout", effect=True)
        s2.release("C", "a", 1.0, 1.1, at=1.02, lost=503, effect=True)
        s2.claim("C", "a", 1.0, 1.1, at=1.03, lost="timeout", effect=True)
        s2.claim("C", "b", 1.2, 1.3)
        s2.claim("C", "c", 1.2, 1.4)
        s2.claim("C", "d", 1.2, 1.4)                # out_of_stock
        self.assertEqual(s2.check(freshness=0.0), [])

    def test_stale_not_found(self):
        s = self.base()
        d = s.get("C", 2.0, 2.1)
        d.update(status=404, body=err("coupon_not_found"))
        self.assertEqual(kinds(s.check()), ["stale_not_found"])
        d.update(invoke=0.05)                      # sent before the create's 201: legal
        self.assertEqual(s.check(), [])

    def test_stale_already_claimed_after_completed_release(self):
        s = self.base()
        s.release("C", "a", 2.0, 2.1)
        d = s.claim("C", "a", 3.5, 3.6)
        s.coupons["C"]["holders"].remove("a")
        s.coupons["C"]["remaining"] += 1
        d.update(status=409, body=err("already_claimed"))
        self.assertEqual(kinds(s.check()), ["stale_already_claimed"])
        d.update(invoke=2.5, complete=2.6)        # within the freshness bound: legal
        self.assertEqual(s.check(), [])

    def test_stale_already_claimed_of_a_user_who_never_claimed(self):
        s = self.base()
        d = s.claim("C", "n", 2.0, 2.1)
        s.coupons["C"]["holders"].remove("n")
        s.coupons["C"]["remaining"] += 1
        d.update(status=409, body=err("already_claimed"))
        self.assertEqual(kinds(s.check()), ["stale_already_claimed"])

    def test_stock_mismatch(self):
        s = self.base()
        f = s.final()
        f["coupons"]["C"]["remaining_amount"] += 1
        self.assertCaught(s.check(final=f), "stock_mismatch")
        f = s.final()
        f["coupons"]["C"]["amount"] += 5
        f["coupons"]["C"]["remaining_amount"] += 5
        self.assertEqual(kinds(s.check(final=f)), ["stock_mismatch"])  # no restock gave them

    def test_impossible_get_remaining(self):
        s = self.base()
        d = s.get("C", 2.0, 2.1)
        d["body"].update(remaining_amount=2, claimed_by=["a"])   # b's 200 came before
        self.assertCaught(s.check(), "impossible_remaining")
        d["body"].update(remaining_amount=1, claimed_by=["a", "b"], amount=3)
        self.assertEqual(s.check(), [])
        d["body"].update(remaining_amount=0, claimed_by=["a", "b", "zz"])
        self.assertCaught(s.check(), "impossible_remaining")

    def test_impossible_holders(self):
        s = self.base()
        d = s.get("C", 2.0, 2.1)
        d["body"]["claimed_by"] = ["a", "ghost"]
        self.assertCaught(s.check(), "impossible_holders")
        d["body"]["claimed_by"] = ["a", "b"]
        self.assertEqual(s.check(), [])

    def test_impossible_claim_remaining(self):
        s = self.base()
        s.ops[2]["body"]["remaining_amount"] = 2  # b's claim: 1 was left after it
        self.assertEqual(kinds(s.check()), ["impossible_remaining"])

    def test_oversold(self):
        s = Sim()
        s.create("C", 1, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1)
        d = s.claim("C", "b", 1.2, 1.3)             # out_of_stock in a legal run
        d.update(status=200, body={"user_id": "b", "coupon_name": "C", "remaining_amount": 0})
        f = s.final()
        f["claims"].append(["C", "b"])
        f["coupons"]["C"]["remaining_amount"] = -1
        got = s.check(final=f)
        self.assertCaught(got, "oversold")
        self.assertEqual(sum(a["kind"] == "oversold" for a in got), 2)  # history and final state

    def test_lost_release(self):
        s = self.base()
        s.release("C", "a", 2.0, 2.1)
        f = s.final()
        f["releases"] = []
        self.assertEqual(kinds(s.check(final=f)), ["lost_release"])

    def test_unmatched_release(self):
        s = self.base()
        s.release("C", "a", 2.0, 2.1)
        d = s.release("C", "a", 3.0, 3.1)           # 404 claim_not_found in a legal run
        d.update(status=200, body={"coupon_name": "C", "user_id": "a", "remaining_amount": 2})
        f = s.final()
        f["releases"].append(["C", "a"])
        self.assertCaught(s.check(final=f), "unmatched_release")

    def test_lost_create_and_phantom_claim(self):
        s = self.base()
        s.create("D", 1, 2.0, 2.1)
        f = s.final()
        del f["coupons"]["D"]
        f["claims"].append(["C", "zz"])
        f["coupons"]["C"]["remaining_amount"] -= 1
        got = kinds(s.check(final=f))
        self.assertIn("lost_create", got)
        self.assertIn("phantom_claim", got)

    def test_500(self):
        s = self.base()
        s.ops[1].update(status=500, body=err("internal_error"))
        self.assertIn("undocumented_answer", kinds(s.check()))

    def test_empty_and_reset_answers_from_a_replica_not_faulted(self):
        for error in (None, "reset", "closed"):
            s = self.base()
            s.claim("C", "c", 2.0, 2.1, lost=error or 0, effect=False, target="replica-1")
            self.assertEqual(kinds(s.check()), ["undocumented_answer"], error)
            s.ops[-1]["faulted_target"] = True
            self.assertEqual(s.check(), [], error)

    def test_timeouts_and_refused_replicas_are_allowed(self):
        s = self.base()
        s.claim("C", "c", 2.0, 2.1, lost="timeout", effect=False, target="edge")
        s.claim("C", "d", 2.0, 2.1, lost="refused", effect=False, target="replica-3")
        self.assertEqual(s.check(), [])
        s.ops[-1]["target"] = "edge"
        self.assertEqual(kinds(s.check()), ["undocumented_answer"])

    def test_undocumented_statuses_and_codes(self):
        cases = [
            (409, err("coupon_exists"), "edge"),          # not a claim's code
            (502, err("bad_gateway"), "replica-1"),        # edge answers only through the edge
            (418, err("teapot"), "edge"),
            (503, {"oops": 1}, "edge"),                    # not the error body
            (503, "", "edge"),                             # empty body
            (200, {"user_id": "zz", "coupon_name": "C", "remaining_amount": 0}, "edge"),
        ]
        for status, body, target in cases:
            s = self.base()
            d = s.claim("C", "c", 2.0, 2.1, lost="timeout", effect=False)
            d.update(status=status, body=body, target=target, error=None)
            self.assertIn("undocumented_answer", kinds(s.check()), (status, body, target))

    def test_documented_edge_answers(self):
        for status, code in ((502, "bad_gateway"), (503, "service_unavailable"),
                             (504, "gateway_timeout"), (429, "rate_limited"),
                             (503, "overloaded"), (503, "busy")):
            s = self.base()
            s.claim("C", "c", 2.0, 2.1, lost="timeout", effect=False)
            s.ops[-1].update(status=status, body=err(code), error=None)
            self.assertEqual(s.check(), [], (status, code))


# ---------------------------------------------------------------- borderline legal


class BorderlineLegal(unittest.TestCase):
    def test_out_of_stock_overlapping_a_release_that_completed_after_invoke(self):
        s = Sim()
        s.create("C", 1, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1)
        s.claim("C", "b", 5.0, 5.3, at=5.05)        # out_of_stock, decided before the release
        s.release("C", "a", 4.9, 5.2, at=5.1)       # completed after b was sent
        self.assertEqual(s.ops[2]["body"]["error"]["code"], "out_of_stock")
        self.assertEqual(s.check(freshness=0.0), [])
        self.assertEqual(s.check(), [])

    def test_out_of_stock_when_an_indeterminate_claim_could_have_taken_the_last_unit(self):
        s = Sim()
        s.create("C", 1, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1, at=1.05, lost=503, effect=True)
        s.claim("C", "b", 1.2, 1.3)                 # out_of_stock
        self.assertEqual(s.check(freshness=0.0), [])
        # And when the indeterminate claim was later released: still legal.
        s.release("C", "a", 2.0, 2.1)
        self.assertEqual(s.check(freshness=0.0), [])

    def test_out_of_stock_when_an_unanswered_claim_sent_later_commits_first(self):
        s = Sim()
        s.create("C", 1, 0.0, 0.1)
        s.claim("C", "a", 1.25, 1.26, at=1.27, lost="timeout", effect=True)  # after it gave up
        s.claim("C", "b", 1.2, 1.3, at=1.28)        # out_of_stock
        self.assertEqual(s.check(freshness=0.0), [])

    def test_already_claimed_racing_a_release_that_had_not_completed(self):
        s = Sim()
        s.create("C", 5, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1)
        s.claim("C", "a", 2.0, 2.5, at=2.1)          # 409: before the release took effect
        s.release("C", "a", 1.9, 2.3, at=2.2)
        self.assertEqual(s.ops[2]["body"]["error"]["code"], "already_claimed")
        self.assertEqual(s.check(freshness=0.0), [])

    def test_already_claimed_after_a_release_and_an_indeterminate_reclaim(self):
        s = Sim()
        s.create("C", 5, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1)
        s.release("C", "a", 2.0, 2.1)
        s.claim("C", "a", 3.0, 3.1, lost=504, effect=True)
        s.claim("C", "a", 5.0, 5.1)                  # 409: the 504 claim took effect
        self.assertEqual(s.check(), [])

    def test_get_overlapping_claims(self):
        for at in (1.15, 1.45, 1.65):
            s = Sim()
            s.create("C", 3, 0.0, 0.1)
            s.get("C", 1.0, 1.9, at=at) if at < 1.2 else None
            s.claim("C", "a", 1.1, 1.3, at=1.2)
            s.get("C", 1.0, 1.9, at=at) if 1.2 < at < 1.5 else None
            s.claim("C", "b", 1.4, 1.6, at=1.5)
            s.get("C", 1.0, 1.9, at=at) if at > 1.5 else None
            self.assertEqual(s.check(freshness=0.0), [], at)

    def test_get_after_an_unanswered_claim_that_committed_late(self):
        s = Sim()
        s.create("C", 3, 0.0, 0.1)
        s.get("C", 1.2, 1.3, at=1.25)               # does not show a yet
        s.claim("C", "a", 1.0, 1.1, at=1.4, lost="timeout", effect=True)
        s.get("C", 1.5, 1.6)
        self.assertEqual(s.check(freshness=0.0), [])

    def test_sold_out_memory_lag_is_allowed_up_to_freshness(self):
        s = Sim()
        s.create("C", 1, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1)
        s.restock("C", 1, 2.0, 2.1)
        d = s.claim("C", "b", 2.8, 2.9)
        s.coupons["C"]["holders"].remove("b")
        s.coupons["C"]["remaining"] += 1
        d.update(status=400, body=err("out_of_stock"))   # 0.7 s after the restock
        self.assertEqual(s.check(), [])
        self.assertEqual(kinds(s.check(freshness=0.5)), ["stale_out_of_stock"])


# ---------------------------------------------------------------- command line


class CommandLine(unittest.TestCase):
    def run_cli(self, ops, final):
        with tempfile.TemporaryDirectory() as d:
            h, f = os.path.join(d, "history.json"), os.path.join(d, "final.json")
            with open(h, "w") as fh:
                json.dump({"ops": ops, "faults": [{"kind": "replica_kill", "start": 1.0,
                                                   "end": 2.0, "detail": "replica-1"}]}, fh)
            with open(f, "w") as fh:
                json.dump(final, fh)
            return subprocess.run([sys.executable, checker.__file__, h, f],
                                  capture_output=True, text=True, timeout=60)

    def test_exit_codes(self):
        s = Sim()
        s.create("C", 1, 0.0, 0.1)
        s.claim("C", "a", 1.0, 1.1)
        r = self.run_cli(s.ops, s.final())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("0 anomalies", r.stdout)
        f = s.final()
        f["coupons"]["C"]["remaining_amount"] = 1
        r = self.run_cli(s.ops, f)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("stock_mismatch", r.stdout)
        self.assertIn("replica_kill", r.stdout)

    def test_usage(self):
        with contextlib.redirect_stderr(io.StringIO()) as e:
            self.assertEqual(checker.main([]), 2)
            self.assertEqual(checker.main(["a.json", "b.json", "--freshness", "soon"]), 2)
        self.assertIn("usage", e.getvalue())


if __name__ == "__main__":
    unittest.main()
