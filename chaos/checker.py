#!/usr/bin/env python3
"""The chaos harness's history checker: proves that one schedule's history
of client operations, and the database's state after it, are something the
documented service could have produced.

Input (see /work/shared-notes/chaos-history-format.md): a list of
operations, each with the time it was sent (`invoke`) and the time its
answer came or the client gave up (`complete`), both on one monotonic
clock, and what came back; and the final state read from PostgreSQL once
the schedule has quiesced (`coupons`, `claims`, `releases`). `check()`
returns a list of anomalies, `{"kind", "message", "ops"}`; an empty list
means the history is legal.

How operations are read
-----------------------
Every operation that changes something (create, claim, release, the
operator's SQL restock and claim delete) falls in one of three classes:

* **Surely took effect**: a claim or release answered 200, a create 201,
  operator SQL that reported its commit (status 0) with a row count of 1
  or more. The effect happened at one instant between `invoke` and
  `complete`. (Committed SQL that touched 0 rows changed nothing; a
  committed restock without a row count surely applied when it was sent
  after the coupon surely existed, and may have applied otherwise.)
* **Surely did not**: an answer that documents no effect (400, 401, 403,
  404, 408, 409, 410, 413, 415, 422, 429). Such an operation is ignored by
  every count.
* **Indeterminate**: everything else (503, 502, 504, 500 or any other
  status, no answer, a reset). It may or may not have taken effect, and,
  since the server may still be working on it after the client gave up,
  its effect may come at any instant from `invoke` on, without end (as
  Jepsen treats them). The checker allows both, never more. The final
  state settles some of them: an indeterminate claim whose (coupon, user)
  is not in the final `claims`, and that no release or delete could have
  followed, surely did not take effect, and is then dropped from the
  counts.

An answer that carries `replayed: true` (optional field: the answer had
`Idempotent-Replayed: true`) is the copy of an earlier effect, never a new
one; it is counted as indeterminate.

Every bound below counts events by their time windows only, so that every
order of the overlapping operations that their windows allow satisfies it:
an effect is "surely before t" when its operation completed with a
definite answer before t, and "possibly before t" when its operation was
sent before t and may have taken effect. Where a bound could be made
tighter only by guessing an order, it is not: the checker prefers missing
an anomaly to reporting a legal history. Claims are counted per (coupon,
user): a user's claims may have taken at most one unit more than the
releases and deletes of their pair that may have come before (a holder's
next claim is refused until one does), so a user who sends ten claims at
once, all unanswered, counts for one unit.

Freshness
---------
A claim's 400 `out_of_stock` and 409 `already_claimed` may come from a
server's sold-out memory, which docs/architecture.md ("Keeping the memory
fresh") allows to be up to 1 s behind a release, a restock or a deleted
claim made on another server (the one that released serves the unit at
once, but the checker does not know which server answered through the
edge). So for those two answers a release, restock or delete counts as
"surely seen" only when it completed `freshness` seconds (default 1.0, the
documented bound) before the claim was sent. A create needs no such
allowance: a server can only remember a coupon as sold out after a
transaction saw it exist. GETs are read from the database in one snapshot
and get no allowance.

What is checked (the kinds)
---------------------------
Over the final state:

* `double_claim`: a (coupon, user) twice in `claims`.
* `stock_mismatch`: for a coupon, `amount != remaining_amount +
  count(claims)`, a remaining stock below 0 or above the amount, claims of
  a coupon that does not exist, or a final `amount` that no set of the
  creates and restocks in the history gives.
* `lost_claim`: a claim answered 200 whose (coupon, user) is not in
  `claims`, although no release or delete (answered 200, committed, or
  indeterminate) could have come after it. One could when it may have
  taken effect after the claim was sent: it is indeterminate, or it
  completed after the claim's invoke.
* `lost_release`: more releases answered 200 for a (coupon, user) than
  `claim_releases` rows for it.
* `lost_create`: a create answered 201 for a coupon absent at the end.
* `phantom_claim`: a (coupon, user) in `claims` that no claim in the
  history could have made (and that was not there at the start).

Over the history:

* `double_claim`: two claims answered 200 for one (coupon, user) with no
  release or delete that could lie between them in either order. (For the
  order A then B a release R fits between when R may end after A began,
  R began before B ended, and A began before B ended.) A GET whose
  `claimed_by` names a user twice.
* `unmatched_release`: a release answered 200 (or an operator's delete
  that removed a row) that no claim could have preceded, or two such
  removals for one (coupon, user), one of them a release, with no possible
  claim between them: a unit given back twice.
* `oversold`: at some instant more (coupon, user) pairs surely hold a unit
  than the stock that could possibly exist then. A 200 claim surely holds
  from its `complete` until the `invoke` of the first release or delete of
  its pair that could follow it; the stock that could exist at t is the
  start amount plus the largest create and every restock sent before t.
  (A double claim of one pair counts once here: it is reported as a
  double_claim.)
  Also a final `remaining_amount` below zero.
* `stale_out_of_stock`: a 400 `out_of_stock` although a unit was surely
  free during the whole time the answer could have been decided. The
  answer says "0 left at some instant s", with s at or after the claim's
  invoke (minus the freshness allowance) and before its complete. At any
  such s the remaining stock is at least
      start remaining + the created amount (smallest possible; the answer
      proves the coupon existed)
      + restocks surely applied and completed before invoke - freshness
      + releases and deletes that completed before invoke - freshness
      - every claim (200 or indeterminate, not settled as failed) sent
        before this claim completed (per pair, as above).
  Each term is safe on its own: a write that completed before invoke -
  freshness is surely before s, and a claim sent after the answer came
  cannot have taken its unit before s. When this is above 0 the answer is
  stale.
* `stale_already_claimed`: a 409 `already_claimed` although the user
  surely held nothing during the whole time the answer could have been
  decided ([invoke - freshness, complete]). That is so when every claim of
  theirs that could have committed before the answer (another claim of the
  pair, answered 200 or indeterminate, sent before this one completed; or a
  holding from before the schedule) is surely followed by a release or
  delete that completed before invoke - freshness: surely followed means
  sent after that claim surely ended, so after its effect. With no such
  claim at all the user never held the coupon, and the 409 is stale too.
  (This is the brief's rule: a release completed before the claim was
  sent, and no other claim of theirs could have come in between.)
* `impossible_remaining`: a `remaining_amount` outside the bounds every
  order allows. For a GET read at an instant s in [invoke, complete]:
      upper = start remaining + largest possible created amount
              + restocks, releases and deletes sent before complete
                (anything that may have added by s)
              - claims answered 200 that completed before invoke
                (surely taken by s);
      lower = start remaining + smallest created amount
              + restocks surely applied, releases and deletes that
                completed before invoke (surely added by s)
              - claims (200 or indeterminate) sent before complete,
                per pair as above (anything that may have taken by s).
  The same bounds, with the operation's own effect added, hold for the
  `remaining_amount` of a claim's 200 (the stock after it: -1) and of a
  release's 200 (+1). Within one GET, `remaining_amount` must also equal
  `amount - len(claimed_by)` (the snapshot is one transaction), and the
  GET's `amount` must lie between the surely and the possibly added stock.
* `impossible_holders`: a GET's `claimed_by` misses a user whose 200 claim
  completed before the GET was sent and that no release or delete could
  have followed before the GET ended, or names a user that no claim sent
  before the GET ended could have made a holder.
* `stale_not_found`: a 404 `coupon_not_found` for a request sent after an
  answer that proved the coupon exists (a 201, or any answer only an
  existing coupon gets): coupons are never deleted, and no server
  remembers that a coupon is missing.
* `undocumented_answer`: a status, or a code for that status, that
  docs/api.md and openapi.yaml do not list for the operation (the edge's
  own answers of deploy/errors/*.http are documented for target "edge"
  only: 400 bad_request/header_not_ascii, 403 forbidden, 408, 413, 429
  rate_limited, 502 bad_gateway, 503 service_unavailable/overloaded, 504
  gateway_timeout), any 500, an error answer without the documented
  `{"error": {"code", "message"}}` body, a 2xx body of the wrong shape or
  for another coupon or user, an empty answer, and a connection reset or
  closed without an answer, unless the harness marked the target as
  faulted (`faulted_target`: the replica was killed or stopped while it
  held the request). A client timeout is allowed (the harness's recovery
  check bounds waiting); a refused connection is allowed to a replica
  (it may be down) but not to the edge.

Coupons that the history never creates and that are not in
`coupons_at_start` are of unknown origin: the checks that need a coupon's
whole story (stock bounds, stale answers but stale_not_found, oversold,
unmatched releases, phantom claims) skip them. A coupon with a negative
restock gets no stock bounds either.

Optional additions to the agreed format (all may be left out):
`replayed: true` on an answer that carried `Idempotent-Replayed: true`;
`body: {"updated": n}` on an `sql_restock` (rows the UPDATE touched);
`"coupons_at_start"` beside `"ops"` in HISTORY.json for the command line;
and the keyword argument `check(..., freshness=1.0)`.

Command line: `python3 chaos/checker.py HISTORY.json FINAL.json
[--freshness S]`, with HISTORY.json `{"ops": [...], "faults": [...]}`;
prints the faults and the anomalies (see `print_anomalies`, which the
harness may call itself) and exits 1 when there is any, 0 when none, 2 on
a usage error.
"""

from __future__ import annotations

import bisect
import json
import math
import sys
from collections import defaultdict

INF = math.inf
DEFAULT_FRESHNESS = 1.0
MAX_OPS_IN_ANOMALY = 20
NEIGHBOURS = 4  # answers of one pair compared with each other, in time order

# ---------------------------------------------------------------- answers

# Statuses whose answer documents that nothing was done.
NO_EFFECT = frozenset({400, 401, 403, 404, 405, 408, 409, 410, 413, 415, 422, 429})

UNAVAILABLE = {"busy", "database_unavailable", "shutting_down", "overloaded"}
BODY_400 = {"invalid_json", "incomplete_body", "body_not_object", "duplicate_field",
            "unknown_field", "invalid_idempotency_key", "header_not_ascii"}


def _fields(*names):
    out = set()
    for n in names:
        out |= {f"{n}_missing", f"{n}_not_a_string", f"{n}_empty", f"{n}_too_long",
                f"{n}_surrounding_whitespace", f"{n}_control_character"}
    return out


PATH_NAME = {"coupon_name_empty", "coupon_name_too_long",
             "coupon_name_surrounding_whitespace", "coupon_name_control_character"}
USER_PATH = {"user_id_empty", "user_id_too_long", "user_id_surrounding_whitespace",
             "user_id_control_character"}

# The service's own answers per operation (openapi.yaml, docs/api.md):
# status -> allowed codes (None: a success, with its own body check).
SERVICE_ANSWERS = {
    "create": {
        201: None,
        400: BODY_400 | _fields("name") | {"amount_missing", "amount_not_a_whole_number",
              "amount_negative", "amount_too_large", "starts_at_not_a_string",
              "starts_at_not_rfc3339", "expires_at_not_a_string", "expires_at_not_rfc3339",
              "expires_at_not_after_starts_at"},
        401: {"unauthorized"}, 403: {"forbidden"}, 408: {"request_timeout"},
        409: {"coupon_exists"}, 413: {"payload_too_large"}, 415: {"unsupported_media_type"},
        422: {"idempotency_key_mismatch"}, 503: UNAVAILABLE,
    },
    "claim": {
        200: None,
        400: {"out_of_stock"} | BODY_400 | _fields("user_id", "coupon_name"),
        403: {"not_started"}, 404: {"coupon_not_found"}, 408: {"request_timeout"},
        409: {"already_claimed"}, 410: {"expired"}, 413: {"payload_too_large"},
        415: {"unsupported_media_type"}, 422: {"idempotency_key_mismatch"}, 503: UNAVAILABLE,
    },
    "release": {
        200: None,
        400: {"invalid_idempotency_key", "header_not_ascii", "invalid_path"} | PATH_NAME | USER_PATH,
        401: {"unauthorized"}, 403: {"forbidden"},
        404: {"coupon_not_found", "claim_not_found"},
        422: {"idempotency_key_mismatch"}, 503: UNAVAILABLE,
    },
    "get": {
        200: None, 400: {"invalid_path"} | PATH_NAME, 404: {"coupon_not_found"},
        503: UNAVAILABLE,
    },
    "list": {
        200: None, 400: {"invalid_limit", "invalid_cursor"}, 503: UNAVAILABLE,
    },
}

# The edge's own answers (deploy/errors/*.http, docs/deployment.md "The
# edge's own answers"), documented for requests sent to the edge only. Its
# 500 (internal_error) is left out on purpose: no 500 is acceptable.
EDGE_ANSWERS = {
    400: {"bad_request", "header_not_ascii"}, 403: {"forbidden"}, 408: {"request_timeout"},
    413: {"payload_too_large"}, 429: {"rate_limited"}, 502: {"bad_gateway"},
    503: {"service_unavailable", "overloaded"}, 504: {"gateway_timeout"},
}

HTTP_OPS = frozenset(SERVICE_ANSWERS)
WRITE_KINDS = ("create", "claim", "release", "sql_restock", "sql_delete_claim")


def _allowed(op_kind, status, target):
    """(whether the status is documented for this operation and target,
    the codes documented with it; None for a success)."""
    table = SERVICE_ANSWERS[op_kind]
    codes = table.get(status)
    if target == "edge" and status in EDGE_ANSWERS:
        return True, (codes or set()) | EDGE_ANSWERS[status]
    return status in table, codes


# ---------------------------------------------------------------- ops


class Op:
    __slots__ = ("d", "id", "kind", "coupon", "user", "pair", "invoke", "complete",
                 "status", "body", "possible", "sure", "eff_hi", "replayed", "weight")

    def __init__(self, d):
        self.d = d
        self.id = d.get("id")
        self.kind = d.get("op")
        self.coupon = d.get("coupon")
        self.user = d.get("user")
        self.pair = (self.coupon, self.user)
        self.invoke = float(d.get("invoke", 0.0))
        c = d.get("complete")
        self.complete = INF if c is None else float(c)
        self.status = d.get("status")
        self.body = d.get("body")
        self.replayed = bool(d.get("replayed"))
        self.weight = 1
        self.possible = False  # may have taken effect
        self.sure = False      # surely took effect, at or before complete
        self.eff_hi = INF      # latest instant its effect can have happened
        self._classify()

    def code(self):
        b = self.body
        if isinstance(b, dict) and isinstance(b.get("error"), dict):
            return b["error"].get("code")
        return None

    def _classify(self):
        k, s = self.kind, self.status
        if k in ("claim", "release", "create"):
            ok = 201 if k == "create" else 200
            if s == ok and not self.replayed:
                self.possible = self.sure = True
                self.eff_hi = self.complete
            elif s in NO_EFFECT:
                pass
            else:  # indeterminate: 5xx, no answer, a replayed copy, anything else
                self.possible = True
            if k == "create":
                self.weight = int(self.d.get("amount") or 0)
        elif k in ("sql_restock", "sql_delete_claim"):
            count_key = "deleted" if k == "sql_delete_claim" else "updated"
            n = self.body.get(count_key) if isinstance(self.body, dict) else None
            if k == "sql_restock":
                self.weight = int(self.d.get("add") or 0)
            if s == 0:
                self.eff_hi = self.complete
                if isinstance(n, int) and n == 0:
                    return  # committed, touched nothing
                self.possible = True
                if isinstance(n, int) and n >= 1:
                    self.sure = True
                    if k == "sql_delete_claim":
                        self.weight = n
                elif k == "sql_restock":
                    self.sure = None  # decided later: surely applied if the coupon surely existed
            else:
                self.possible = True  # unknown outcome

    def short(self):
        return f"{self.kind} #{self.id}"


class Timeline:
    """Weights at instants; before(t) is the sum of those strictly before t."""

    __slots__ = ("times", "sums")

    def __init__(self, items):
        items = sorted(items)
        self.times = [t for t, _ in items]
        self.sums = [0]
        for _, w in items:
            self.sums.append(self.sums[-1] + w)

    def before(self, t):
        return self.sums[bisect.bisect_left(self.times, t)]

    def total(self):
        return self.sums[-1]


def _anomaly(kind, message, ops):
    ds = []
    seen = set()
    for o in ops:
        if o is None:
            continue
        d = o.d if isinstance(o, Op) else o
        key = id(d)
        if key in seen:
            continue
        seen.add(key)
        ds.append(d)
        if len(ds) >= MAX_OPS_IN_ANOMALY:
            break
    return {"kind": kind, "message": message, "ops": ds}


def _fmt(t):
    return "inf" if t == INF else f"{t:.3f}"


# ---------------------------------------------------------------- coupon model


def _possible_takes(claims, removals, coupon, start_holders):
    """The instants at which the number of units a coupon's claims may have
    taken grows, as (instant, 1) pairs: the sum of those before t bounds
    from above the units taken by claims that took effect before t.

    Per (coupon, user) the units taken before t are at most the claims
    that may have taken effect (sent before t), and at most one more than
    the releases and deletes of the pair that may have taken effect before t
    (sent before t), one fewer when the pair was held at the start: a
    holder's second claim is refused until a removal comes in between. So
    a user who sends ten claims at once, all unanswered, counts for one
    unit, not ten."""
    by_user = defaultdict(list)
    for o in claims:
        by_user[o.user].append((o.invoke, 0))
    for o in removals:
        if o.user in by_user:
            by_user[o.user].append((o.invoke, 1))
    out = []
    for user, events in by_user.items():
        events.sort()
        budget = 0 if (coupon, user) in start_holders else 1
        n_claims = 0
        taken = 0
        for t, is_removal in events:
            if is_removal:
                budget += 1
            else:
                n_claims += 1
            now = min(n_claims, budget)
            if now > taken:
                out.append((t, now - taken))
                taken = now
    return out



class Coupon:
    """What the history says about one coupon's stock."""

    def __init__(self, name, ops, start, start_holders=frozenset()):
        self.name = name
        self.start = start
        creates = [o for o in ops if o.kind == "create" and o.possible]
        sure_creates = [o for o in creates if o.sure]
        if start is not None:
            self.r0 = int(start.get("remaining_amount", 0))
            self.a0 = int(start.get("amount", 0))
            self.a_min = self.a_max = 0
            self.create_invoke = INF
            self.known = True
        else:
            self.r0 = self.a0 = 0
            # Only one create can take effect; a 201 names it.
            pool = sure_creates[:1] if sure_creates else creates
            self.a_min = min((o.weight for o in pool), default=0)
            self.a_max = max((o.weight for o in pool), default=0)
            self.create_invoke = min((o.invoke for o in pool), default=INF)
            self.known = bool(pool)
        self.creates = creates
        self.sure_create = sure_creates[0] if sure_creates else None
        # The first instant the coupon surely existed: a 201, or any answer
        # that only an existing coupon gets.
        exist = -INF if start is not None else INF
        for o in ops:
            s, code = o.status, o.code()
            proof = ((o.kind == "create" and o.sure)
                     or (o.kind == "claim" and (s == 200 or (s == 409 and code == "already_claimed")
                                                or (s == 400 and code == "out_of_stock")))
                     or (o.kind == "get" and s == 200)
                     or (o.kind == "release" and (s == 200 or (s == 404 and code == "claim_not_found"))))
            if proof and o.complete < exist:
                exist = o.complete
        self.exist = exist
        restocks = [o for o in ops if o.kind == "sql_restock" and o.possible]
        self.bounded = self.known and all(o.weight >= 0 for o in restocks)
        for o in restocks:
            if o.sure is None:
                # Committed, row count unknown: applied for sure when sent
                # after the coupon surely existed (coupons are never deleted).
                o.sure = o.invoke > exist
        claims = [o for o in ops if o.kind == "claim" and o.possible]
        removals = [o for o in ops if o.kind in ("release", "sql_delete_claim") and o.possible]
        self.claims = claims
        self.poss_taken = Timeline(_possible_takes(claims, removals, name, start_holders))
        self.sure_taken = Timeline((o.complete, 1) for o in claims if o.sure)
        self.poss_ret = Timeline((o.invoke, o.weight) for o in removals)
        self.sure_ret = Timeline((o.eff_hi, o.weight) for o in removals if o.sure)
        self.poss_restock = Timeline((o.invoke, o.weight) for o in restocks)
        self.sure_restock = Timeline((o.eff_hi, o.weight) for o in restocks if o.sure)
        self.sure_returns_list = sorted((o for o in removals if o.sure), key=lambda o: o.eff_hi)
        self.sure_restocks_list = sorted((o for o in restocks if o.sure), key=lambda o: o.eff_hi)

    def lower(self, sure_before, poss_before):
        """Smallest remaining stock at an instant s of an existing coupon,
        where every write that completed before `sure_before` surely is
        before s and no claim sent at or after `poss_before` can be."""
        return (self.r0 + self.a_min + self.sure_restock.before(sure_before)
                + self.sure_ret.before(sure_before) - self.poss_taken.before(poss_before))

    def upper(self, sure_before, poss_before):
        """Largest remaining stock at such an instant: everything sent
        before `poss_before` may have added, and the claims answered 200
        that completed before `sure_before` surely took theirs."""
        return (self.r0 + self.a_max + self.poss_restock.before(poss_before)
                + self.poss_ret.before(poss_before) - self.sure_taken.before(sure_before))

    def amount_bounds(self, sure_before, poss_before):
        return (self.a0 + self.a_min + self.sure_restock.before(sure_before),
                self.a0 + self.a_max + self.poss_restock.before(poss_before))

    def capacity(self, t):
        """All the stock that could exist at t."""
        return (self.a0 + (self.a_max if self.create_invoke < t else 0)
                + self.poss_restock.before(t))

    def recent_writes(self, before, n=8):
        out = [o for o in self.sure_returns_list if o.eff_hi < before][-n:]
        out += [o for o in self.sure_restocks_list if o.eff_hi < before][-n:]
        return out


# ---------------------------------------------------------------- the check


def check(history, final, coupons_at_start=None, *, freshness=DEFAULT_FRESHNESS):
    """Returns the anomalies (empty list: the history is legal).

    `freshness` is how far (seconds) a claim's out_of_stock or
    already_claimed may lag behind a release, restock or deleted claim
    (docs/architecture.md: within 1 s).
    """
    anomalies = []
    add = anomalies.append
    coupons_at_start = coupons_at_start or {}
    final = final or {}
    ops = [Op(d) for d in history]
    ops.sort(key=lambda o: (o.invoke, o.complete))

    by_coupon = defaultdict(list)
    by_pair = defaultdict(list)
    for o in ops:
        if o.coupon is not None:
            by_coupon[o.coupon].append(o)
            if o.user is not None:
                by_pair[o.pair].append(o)

    final_coupons = final.get("coupons") or {}
    final_claims = [tuple(p) for p in (final.get("claims") or [])]
    final_claim_set = set(final_claims)
    release_rows = defaultdict(int)
    for p in final.get("releases") or []:
        release_rows[tuple(p)] += 1
    start_holders = set()
    for name, st in coupons_at_start.items():
        for u in st.get("claims") or []:
            start_holders.add((name, u[1] if isinstance(u, (list, tuple)) else u))

    # Settle indeterminate claims with the final state: one whose pair is
    # not held at the end and that no removal could have followed never
    # took effect.
    for pair, pops in by_pair.items():
        removals = [o for o in pops if o.kind in ("release", "sql_delete_claim") and o.possible]
        if pair in final_claim_set:
            continue
        for o in pops:
            if o.kind == "claim" and o.possible and not o.sure:
                if not any(r.eff_hi > o.invoke for r in removals):
                    o.possible = False

    names = set(by_coupon) | set(coupons_at_start)
    coupons = {n: Coupon(n, by_coupon.get(n, []), coupons_at_start.get(n), start_holders)
               for n in names}

    _check_answers(ops, add)
    _check_final(coupons, final_coupons, final_claims, final_claim_set, by_coupon, by_pair,
                 start_holders, add)
    _check_pairs(by_pair, coupons, final_claim_set, release_rows, start_holders, freshness, add)
    _check_stock(coupons, by_coupon, by_pair, start_holders, freshness, add)
    _check_not_found(coupons, by_coupon, add)
    return anomalies


def _check_not_found(coupons, by_coupon, add):
    """A coupon is never deleted, and nothing remembers that a coupon does
    not exist: once an answer proved it exists, a request sent after that
    answer came must find it."""
    for name, c in coupons.items():
        for o in by_coupon.get(name, ()):
            if (o.kind in ("claim", "release", "get") and o.status == 404
                    and o.code() == "coupon_not_found" and o.invoke > c.exist):
                add(_anomaly("stale_not_found",
                             f"{o.short()} of {name!r} sent at {_fmt(o.invoke)} was answered 404 "
                             f"coupon_not_found, but the coupon surely existed from "
                             f"{_fmt(c.exist)} on", [o, c.sure_create]))


# ---------------------------------------------------------------- 4. answers


def _check_answers(ops, add):
    for o in ops:
        if o.kind not in HTTP_OPS:
            continue
        err = o.d.get("error")
        faulted = bool(o.d.get("faulted_target"))
        target = o.d.get("target")
        if err is not None or o.status is None:
            if faulted or err == "timeout" or (err == "refused" and target != "edge"):
                continue
            what = (f"no answer: the connection was {err}" if err in ("reset", "closed", "refused")
                    else "an empty answer" if err is None else f"no answer ({err})")
            add(_anomaly("undocumented_answer",
                         f"{o.short()} to {target} got {what} and the harness did not mark "
                         f"{target} as faulted during it", [o]))
            continue
        if o.status == 500:
            add(_anomaly("undocumented_answer",
                         f"{o.short()} to {target} was answered 500 ({o.code()})", [o]))
            continue
        known, codes = _allowed(o.kind, o.status, target)
        if not known:
            add(_anomaly("undocumented_answer",
                         f"{o.short()} to {target} was answered {o.status}, a status not "
                         f"documented for {o.kind}", [o]))
            continue
        if codes is None:  # a success
            problem = _success_body_problem(o)
            if problem:
                add(_anomaly("undocumented_answer",
                             f"{o.short()} to {target} was answered {o.status} with {problem}",
                             [o]))
            continue
        b = o.body
        if (not isinstance(b, dict) or not isinstance(b.get("error"), dict)
                or not isinstance(b["error"].get("code"), str)
                or not isinstance(b["error"].get("message"), str)
                or not b["error"]["message"]):
            add(_anomaly("undocumented_answer",
                         f"{o.short()} to {target} was answered {o.status} without the documented "
                         f"error body (got {_clip(b)})", [o]))
            continue
        if b["error"]["code"] not in codes:
            add(_anomaly("undocumented_answer",
                         f"{o.short()} to {target} was answered {o.status} "
                         f"{b['error']['code']}, a code not documented for it", [o]))


def _clip(b):
    s = json.dumps(b) if not isinstance(b, str) else repr(b)
    return s if len(s) <= 80 else s[:77] + "..."


def _is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _success_body_problem(o):
    b = o.body
    if b is None or b == "":
        return "an empty body"
    if not isinstance(b, dict):
        return f"a body that is not a JSON object ({_clip(b)})"
    if o.kind in ("claim", "release"):
        if not _is_count(b.get("remaining_amount")):
            return f"no remaining_amount ({_clip(b)})"
        if o.user is not None and b.get("user_id") != o.user:
            return f"the user {b.get('user_id')!r} instead of {o.user!r}"
        if o.coupon is not None and b.get("coupon_name") != o.coupon:
            return f"the coupon {b.get('coupon_name')!r} instead of {o.coupon!r}"
    elif o.kind in ("get", "create"):
        if not (_is_count(b.get("amount")) and _is_count(b.get("remaining_amount"))
                and isinstance(b.get("claimed_by"), list)):
            return f"a body that is not a coupon ({_clip(b)})"
        if o.coupon is not None and b.get("name") != o.coupon:
            return f"the coupon {b.get('name')!r} instead of {o.coupon!r}"
        if o.kind == "create" and (b["claimed_by"] or b["remaining_amount"] != b["amount"]
                                   or ("amount" in o.d and b["amount"] != o.d["amount"])):
            return f"a body that is not the new coupon ({_clip(b)})"
    elif o.kind == "list":
        if not isinstance(b.get("coupons"), list):
            return f"a body that is not a listing ({_clip(b)})"
    return None


# ---------------------------------------------------------------- final state


def _check_final(coupons, final_coupons, final_claims, final_claim_set, by_coupon, by_pair,
                 start_holders, add):
    counts = defaultdict(int)
    seen = defaultdict(int)
    for p in final_claims:
        counts[p[0]] += 1
        seen[p] += 1
    for p, n in sorted(seen.items()):
        if n > 1:
            add(_anomaly("double_claim",
                         f"user {p[1]!r} holds coupon {p[0]!r} {n} times in the final claims",
                         [o for o in by_pair.get(p, []) if o.kind == "claim" and o.possible]))
    for name in sorted(set(counts) - set(final_coupons)):
        add(_anomaly("stock_mismatch",
                     f"{counts[name]} final claims are of coupon {name!r}, which does not exist",
                     by_coupon.get(name, [])[:5]))
    for name, st in sorted(final_coupons.items()):
        amount, remaining = st.get("amount"), st.get("remaining_amount")
        n = counts.get(name, 0)
        if amount != remaining + n:
            add(_anomaly("stock_mismatch",
                         f"coupon {name!r} ends with amount {amount} but remaining_amount "
                         f"{remaining} + {n} claims = {remaining + n}",
                         by_coupon.get(name, [])[:5]))
        if remaining < 0:
            add(_anomaly("oversold", f"coupon {name!r} ends with remaining_amount {remaining}",
                         by_coupon.get(name, [])[:5]))
        elif remaining > amount:
            add(_anomaly("stock_mismatch",
                         f"coupon {name!r} ends with remaining_amount {remaining} above its "
                         f"amount {amount}", by_coupon.get(name, [])[:5]))
        c = coupons.get(name)
        if c is not None and c.bounded:
            lo, hi = c.amount_bounds(INF, INF)
            if not lo <= amount <= hi:
                add(_anomaly("stock_mismatch",
                             f"coupon {name!r} ends with amount {amount}, but its creates and "
                             f"restocks give between {lo} and {hi}",
                             c.creates + [o for o in by_coupon[name] if o.kind == "sql_restock"]))
    for name, c in sorted(coupons.items()):
        if c.sure_create is not None and name not in final_coupons:
            add(_anomaly("lost_create",
                         f"coupon {name!r} was answered 201 but does not exist at the end",
                         [c.sure_create]))
    for p in sorted(final_claim_set):
        c = coupons.get(p[0])
        if c is None or not c.known or p in start_holders:
            continue
        if not any(o.kind == "claim" and o.possible for o in by_pair.get(p, [])):
            add(_anomaly("phantom_claim",
                         f"user {p[1]!r} holds coupon {p[0]!r} at the end, but no claim in the "
                         f"history could have made it", by_pair.get(p, [])))


# ---------------------------------------------------------------- per (coupon, user)


def _between(a, r, b):
    """Whether r's effect can lie between a's and b's, in that order."""
    return a.invoke < r.eff_hi and r.invoke < b.eff_hi and a.invoke < b.eff_hi


def _check_pairs(by_pair, coupons, final_claim_set, release_rows, start_holders, freshness, add):
    for pair, pops in by_pair.items():
        c = coupons.get(pair[0])
        claims = [o for o in pops if o.kind == "claim"]
        removals = [o for o in pops if o.kind in ("release", "sql_delete_claim") and o.possible]
        sure_claims = [o for o in claims if o.sure]
        poss_claims = [o for o in claims if o.possible]
        held_at_start = pair in start_holders

        # 1. lost claim: a 200 not held at the end that nothing could have removed.
        if pair not in final_claim_set:
            for o in sure_claims:
                if not any(r.eff_hi > o.invoke for r in removals):
                    add(_anomaly("lost_claim",
                                 f"claim #{o.id} of {pair[1]!r} on {pair[0]!r} was answered 200 "
                                 f"at {_fmt(o.complete)} but is not in the final claims, and no "
                                 f"release or delete could have come after it", [o]))

        # 1. lost release: each 200 release writes a claim_releases row.
        sure_releases = [o for o in pops if o.kind == "release" and o.sure]
        if len(sure_releases) > release_rows.get(pair, 0):
            add(_anomaly("lost_release",
                         f"{len(sure_releases)} releases of {pair[1]!r} on {pair[0]!r} were "
                         f"answered 200 but claim_releases has {release_rows.get(pair, 0)} rows "
                         f"for them", sure_releases))

        # 2. two 200 claims with no removal that could separate them.
        if held_at_start:
            for b in sure_claims:
                if not any(r.invoke < b.eff_hi for r in removals):
                    add(_anomaly("double_claim",
                                 f"claim #{b.id} of {pair[1]!r} on {pair[0]!r} was answered 200 "
                                 f"although the user held the coupon from the start and no "
                                 f"release could have come before it", [b]))
        # Each claim against its next few in time order: a double shows
        # between neighbours, and comparing every two would cost the square
        # of a pair's claims. (Fewer comparisons only report less.)
        sure_claims.sort(key=lambda o: o.complete)
        for i, a in enumerate(sure_claims):
            for b in sure_claims[i + 1:i + 1 + NEIGHBOURS]:
                if not any(_between(a, r, b) or _between(b, r, a) for r in removals):
                    add(_anomaly("double_claim",
                                 f"claims #{a.id} and #{b.id} of {pair[1]!r} on {pair[0]!r} were "
                                 f"both answered 200 with no release or delete that could lie "
                                 f"between them", [a, b]))

        # Releases answered 200 that no claim could have preceded, or that
        # give one claim back twice.
        sure_removals = [o for o in removals if o.sure]
        if c is None or not c.known:
            continue  # the history may not hold every claim of this coupon
        for r in sure_removals:
            if not held_at_start and not any(y.invoke < r.eff_hi for y in poss_claims):
                add(_anomaly("unmatched_release",
                             f"{r.short()} of {pair[1]!r} on {pair[0]!r} removed a claim, but no "
                             f"claim of theirs could have come before it", [r]))
        sure_removals.sort(key=lambda o: o.complete)
        for i, a in enumerate(sure_removals):
            for b in sure_removals[i + 1:i + 1 + NEIGHBOURS]:
                if a.kind != "release" and b.kind != "release":
                    continue
                if not any(_between(a, y, b) or _between(b, y, a) for y in poss_claims):
                    add(_anomaly("unmatched_release",
                                 f"{a.short()} and {b.short()} of {pair[1]!r} on {pair[0]!r} "
                                 f"both removed a claim with no claim that could lie between "
                                 f"them", [a, b]))

        # 3. stale already_claimed.
        for x in claims:
            if x.status != 409 or x.code() != "already_claimed":
                continue
            cut = x.invoke - freshness
            m = max((r.invoke for r in removals if r.sure and r.eff_hi < cut), default=-INF)
            sources = [y for y in poss_claims if y is not x and y.invoke < x.complete]
            latest = max((y.eff_hi for y in sources), default=-INF)
            if held_at_start and m == -INF:
                continue  # the holding from the start may last
            if sources and latest >= m:
                continue  # some claim of theirs may hold during the answer's window
            rel = [r for r in removals if r.sure and r.eff_hi < cut]
            if not sources and not held_at_start:
                why = "no claim of theirs could have committed before it"
            else:
                why = (f"every claim of theirs that could have come first was surely "
                       f"released or deleted before {_fmt(cut)} (invoke - {freshness} s)")
            add(_anomaly("stale_already_claimed",
                         f"claim #{x.id} of {pair[1]!r} on {pair[0]!r} sent at "
                         f"{_fmt(x.invoke)} was answered 409 already_claimed, but {why}",
                         [x] + rel[-3:] + sources[-5:]))


# ---------------------------------------------------------------- stock bounds


def _hold_intervals(c, cops, start_holders):
    """When each holder surely holds a unit: a claim answered 200 from its
    `complete` (its effect is before) until the `invoke` of the first
    release or delete of its pair that could come after it (one whose
    effect may be later than the claim's start); a holder from the start
    from the beginning until the first release or delete of its pair.
    Returns [(start, end, user, claim op or None)] with start < end."""
    by_user = defaultdict(list)
    for o in cops:
        if o.user is not None and o.kind in ("release", "sql_delete_claim") and o.possible:
            by_user[o.user].append(o)
    holders = [(None, u) for (n, u) in start_holders if n == c.name]
    holders += [(o, o.user) for o in c.claims if o.sure]
    out = []
    for o, u in holders:
        start = -INF if o is None else o.complete
        end = min((r.invoke for r in by_user.get(u, ()) if o is None or r.eff_hi > o.invoke),
                  default=INF)
        if start < end:
            out.append((start, end, u, o))
    return out


def _check_stock(coupons, by_coupon, by_pair, start_holders, freshness, add):
    first_claim = {}  # (coupon, user) -> the first invoke of a claim that may have taken effect
    for c in coupons.values():
        for y in c.claims:
            if y.invoke < first_claim.get(y.pair, INF):
                first_claim[y.pair] = y.invoke
    for name, c in coupons.items():
        if not c.bounded:
            continue
        cops = by_coupon.get(name, [])
        gets = []
        for o in cops:
            s = o.status
            if o.kind == "claim" and s == 400 and o.code() == "out_of_stock":
                cut = o.invoke - freshness
                # The answer was decided from the state at some instant in
                # [invoke - freshness, complete]: see the module docstring.
                lo = c.lower(cut, o.complete)
                if lo > 0:
                    add(_anomaly("stale_out_of_stock",
                                 f"claim #{o.id} on {name!r} sent at {_fmt(o.invoke)} was answered "
                                 f"out_of_stock, but at least {lo} unit(s) were surely free from "
                                 f"{_fmt(cut)} (invoke - {freshness} s) until it completed at "
                                 f"{_fmt(o.complete)}",
                                 [o, c.sure_create] + c.recent_writes(cut)))
            elif o.kind == "get" and s == 200 and isinstance(o.body, dict):
                gets.append(o)
                _check_get(c, o, by_pair, first_claim, start_holders, add)
            elif o.kind in ("claim", "release") and o.sure and isinstance(o.body, dict) \
                    and _is_count(o.body.get("remaining_amount")):
                v = o.body["remaining_amount"]
                if o.kind == "claim":
                    # The stock after this claim: its own unit is taken
                    # (counted by lower() when it was sent before it ended).
                    own = 1 if o.invoke < o.complete else 0
                    lo = c.lower(o.invoke, o.complete) - 1 + own
                    hi = c.upper(o.invoke, o.complete) - 1
                else:
                    # The stock after this release: its own unit is back
                    # (counted by upper() when it was sent before it ended).
                    own = o.weight if o.invoke < o.complete else 0
                    lo = c.lower(o.invoke, o.complete) + 1
                    hi = c.upper(o.invoke, o.complete) - own + 1
                if not lo <= v <= hi:
                    add(_anomaly("impossible_remaining",
                                 f"{o.short()} on {name!r} answered remaining_amount {v}, but "
                                 f"every order of the operations around it gives between {lo} "
                                 f"and {hi}", [o, c.sure_create] + c.recent_writes(o.invoke)))
        intervals = _hold_intervals(c, cops, start_holders)
        _check_oversold(c, intervals, add)
        _check_missing_holders(c, gets, intervals, add)


def _check_get(c, o, by_pair, first_claim, start_holders, add):
    b = o.body
    v, amount, holders = b.get("remaining_amount"), b.get("amount"), b.get("claimed_by")
    if not (_is_count(v) and _is_count(amount) and isinstance(holders, list)):
        return  # reported as an undocumented answer
    name = c.name
    # The snapshot is at one instant in [invoke, complete]: see the bounds
    # in the module docstring.
    lo, hi = c.lower(o.invoke, o.complete), c.upper(o.invoke, o.complete)
    if not lo <= v <= hi:
        add(_anomaly("impossible_remaining",
                     f"GET #{o.id} of {name!r} over [{_fmt(o.invoke)}, {_fmt(o.complete)}] read "
                     f"remaining_amount {v}, but every order of the overlapping operations "
                     f"gives between {lo} and {hi}", [o, c.sure_create] + c.recent_writes(o.invoke)))
    alo, ahi = c.amount_bounds(o.invoke, o.complete)
    if not alo <= amount <= ahi:
        add(_anomaly("impossible_remaining",
                     f"GET #{o.id} of {name!r} read amount {amount}, but the creates and restocks "
                     f"around it give between {alo} and {ahi}", [o, c.sure_create]))
    if amount != v + len(holders):
        add(_anomaly("impossible_remaining",
                     f"GET #{o.id} of {name!r} read amount {amount}, remaining_amount {v} and "
                     f"{len(holders)} holders in one snapshot", [o]))
    seen = set()
    for u in holders:
        if u in seen:
            add(_anomaly("double_claim", f"GET #{o.id} of {name!r} names {u!r} twice in claimed_by",
                         [o]))
            continue
        seen.add(u)
        p = (name, u)
        if p in start_holders:
            continue
        if first_claim.get(p, INF) >= o.complete:
            add(_anomaly("impossible_holders",
                         f"GET #{o.id} of {name!r} names {u!r} in claimed_by, but no claim of theirs "
                         f"sent before it ended could have made them a holder",
                         [o] + by_pair.get(p, [])[:5]))


def _check_missing_holders(c, gets, intervals, add):
    """A GET must name every user who surely holds during its whole
    [invoke, complete]. Swept in invoke order, keeping only the holdings
    that have not ended before the current GET was sent."""
    gets.sort(key=lambda o: o.invoke)
    intervals = sorted(intervals, key=lambda i: i[0])
    active = []
    k = 0
    for g in gets:
        while k < len(intervals) and intervals[k][0] < g.invoke:
            active.append(intervals[k])
            k += 1
        active = [i for i in active if i[1] >= g.invoke]
        named = set(u for u in g.body.get("claimed_by") or () if isinstance(u, str))
        for start, end, u, y in active:
            if end >= g.complete and u not in named:
                what = ("held it from the start" if y is None
                        else f"claim #{y.id} was answered 200 at {_fmt(y.complete)}")
                add(_anomaly("impossible_holders",
                             f"GET #{g.id} of {c.name!r} sent at {_fmt(g.invoke)} does not name "
                             f"{u!r}, who {what}, and no release or delete could have undone it "
                             f"before the GET ended", [g, y]))


def _check_oversold(c, intervals, add):
    """Pairs that surely hold a unit at the same instant, against all the
    stock that could exist at that instant."""
    events = []
    for start, end, u, o in intervals:
        events.append((start, 1, u, o))
        events.append((end, 0, u, o))
    events.sort(key=lambda e: (e[0], e[1]))  # ends before starts at one instant
    active = defaultdict(list)
    for t, kind, u, o in events:
        if kind == 0:
            active[u].remove(o)
            if not active[u]:
                del active[u]
            continue
        active[u].append(o)
        cap = c.capacity(t)
        if len(active) > cap:
            held = [x for lst in active.values() for x in lst if x is not None]
            held.sort(key=lambda x: x.complete)
            add(_anomaly("oversold",
                         f"{len(active)} users surely held coupon {c.name!r} at {_fmt(t)}, but at "
                         f"most {cap} units could exist then",
                         [c.sure_create] + held[-(MAX_OPS_IN_ANOMALY - 1):]))
            return  # one report per coupon


# ---------------------------------------------------------------- command line


def print_anomalies(anomalies, faults=(), out=None):
    """Prints the faults (when there is an anomaly), then each anomaly with
    the operations that make it up, one JSON line each in invoke order,
    then a count by kind."""
    out = sys.stdout if out is None else out
    if anomalies and faults:
        print("faults:", file=out)
        for f in faults:
            print(f"    {f.get('kind')} {f.get('start')}..{f.get('end')} {f.get('detail', '')}",
                  file=out)
    by_kind = defaultdict(int)
    for a in anomalies:
        by_kind[a["kind"]] += 1
        print(f"ANOMALY {a['kind']}: {a['message']}", file=out)
        ops = sorted(a["ops"], key=lambda d: (d.get("invoke", 0), str(d.get("id"))))
        for d in ops:
            print(f"    {json.dumps(d, sort_keys=True)}", file=out)
    summary = ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items()))
    print(f"{len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'}"
          + (f" ({summary})" if summary else ""), file=out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    freshness = DEFAULT_FRESHNESS
    args = []
    i = 0
    while i < len(argv):
        if argv[i] == "--freshness" and i + 1 < len(argv):
            try:
                freshness = float(argv[i + 1])
            except ValueError:
                args = []
                break
            i += 2
        elif argv[i].startswith("--freshness="):
            try:
                freshness = float(argv[i].split("=", 1)[1])
            except ValueError:
                args = []
                break
            i += 1
        else:
            args.append(argv[i])
            i += 1
    if len(args) != 2:
        print("usage: checker.py HISTORY.json FINAL.json [--freshness SECONDS]", file=sys.stderr)
        return 2
    try:
        with open(args[0]) as f:
            hist = json.load(f)
        with open(args[1]) as f:
            final = json.load(f)
    except (OSError, ValueError) as e:
        print(f"checker.py: {e}", file=sys.stderr)
        return 2
    if isinstance(hist, list):
        ops, faults, at_start = hist, [], None
    else:
        ops, faults, at_start = hist.get("ops", []), hist.get("faults", []), hist.get("coupons_at_start")
    anomalies = check(ops, final, at_start, freshness=freshness)
    print_anomalies(anomalies, faults)
    return 1 if anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
