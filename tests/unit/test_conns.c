/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for conns, the connection table, on its own: ids and the
 * registry; the caps at accept (node-wide and per address, a trusted
 * proxy's exemption) and the per-address count that follows a proxy's
 * client; the deferred pass (once per queueing, work queued during the pass
 * done in the same pass, nothing freed before it runs); the timer wheel
 * (never early, disarm, re-arm from the callback, a callback disarming
 * another due in the same tick, the wheel's libevent timer gone once
 * nothing is armed); the flush pass (once per queueing, cancel, queued
 * during the pass). Entries are embedded in a test struct, as conn.c
 * embeds them in sg_conn. The timer tests run a real event loop and assert
 * on what fired and on the monotonic clock's order, never on durations. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "sg/conns.h"
#include "sg/util.h"

typedef struct item {
    sg_conns_entry row;
    int released;     /* ops.release calls */
    int fired;        /* ops.fire calls */
    int flushed;      /* ops.flush calls */
    struct item *flush_on_flush;   /* flush: queue this one too */
    uint64_t armed_ms, due_ms, fired_ms;
    int rearm;        /* fire: arm again this many more times */
    struct item *defer_on_release; /* release: queue this one too */
    struct item *disarm_on_fire;   /* fire: disarm this one (as an abort does) */
} item;

static sg_conns *current; /* the table the callbacks act on */

static item *item_of(sg_conns_entry *e) { return (item *)((char *)e - offsetof(item, row)); }

static void on_release(sg_conns_entry *e)
{
    item *it = item_of(e);
    it->released++;
    if (it->defer_on_release) {
        sg_conns_defer(current, &it->defer_on_release->row);
        it->defer_on_release = NULL;
    }
}

static void on_fire(sg_conns_entry *e)
{
    item *it = item_of(e);
    it->fired++;
    it->fired_ms = sg_now_mono_ms();
    if (it->disarm_on_fire)
        sg_conns_disarm(current, &it->disarm_on_fire->row);
    if (it->rearm > 0) {
        it->rearm--;
        it->armed_ms = sg_now_mono_ms();
        it->due_ms = it->armed_ms + 30;
        sg_conns_arm(current, e, 30);
    }
}

static void on_flush(sg_conns_entry *e)
{
    item *it = item_of(e);
    it->flushed++;
    if (it->flush_on_flush) {
        sg_conns_want_flush(current, &it->flush_on_flush->row);
        it->flush_on_flush = NULL;
    }
}

static const sg_conns_ops OPS = {.release = on_release, .fire = on_fire, .flush = on_flush};

typedef struct fixture {
    struct event_base *base;
    sg_conns *t;
} fixture;

static fixture make(uint64_t max_connections, uint64_t max_per_ip)
{
    fixture f;
    f.base = event_base_new();
    assert_non_null(f.base);
    sg_conns_limits l = {.max_connections = max_connections, .max_per_ip = max_per_ip};
    f.t = sg_conns_new(f.base, &l, &OPS);
    current = f.t;
    return f;
}

static void done(fixture *f)
{
    sg_conns_free(f->t);
    event_base_free(f->base);
    current = NULL;
}

/* Admits an entry the way conn.c accepts a connection: registered, then
 * counted unless a cap refuses it. Returns the cap, or NULL. */
static const char *accept_one(sg_conns *t, item *it, const char *ip, bool exempt)
{
    sg_conns_add(t, &it->row, ip);
    const char *cap = sg_conns_cap_at_accept(t, ip, exempt);
    if (!cap)
        sg_conns_admit(t, &it->row);
    return cap;
}

/* Runs the loop until *count reaches want; each turn waits for at least one
 * event (a wheel tick is 25 ms), so the bound is generous without being a
 * timing test. */
static void run_until(struct event_base *base, const int *count, int want)
{
    for (int i = 0; i < 4000 && *count < want; i++)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(*count, want);
}

/* ---- registry -------------------------------------------------------------- */

static void test_registry(void **state)
{
    fixture f = make(100, 0);
    item a = {0}, b = {0}, c = {0};
    sg_conns_add(f.t, &a.row, "10.0.0.1");
    sg_conns_add(f.t, &b.row, "10.0.0.2");
    sg_conns_add(f.t, &c.row, "10.0.0.3");
    assert_true(a.row.id > 0);
    assert_true(b.row.id > a.row.id);
    assert_true(c.row.id > b.row.id);
    assert_string_equal(b.row.ip, "10.0.0.2");
    assert_int_equal(sg_conns_count(f.t), 3);
    assert_ptr_equal(sg_conns_get(f.t, b.row.id), &b.row);
    assert_null(sg_conns_get(f.t, c.row.id + 1));

    uint64_t ids[4] = {0};
    assert_int_equal(sg_conns_ids(f.t, ids, 4), 3);
    uint64_t sum = ids[0] + ids[1] + ids[2];
    assert_int_equal(sum, a.row.id + b.row.id + c.row.id);
    assert_int_equal(sg_conns_ids(f.t, ids, 2), 2); /* bounded by max */

    sg_conns_remove(f.t, &b.row);
    sg_conns_remove(f.t, &b.row); /* idempotent */
    assert_null(sg_conns_get(f.t, b.row.id));
    assert_int_equal(sg_conns_count(f.t), 2);
    /* Ids are never reused. */
    item d = {0};
    sg_conns_add(f.t, &d.row, "10.0.0.4");
    assert_true(d.row.id > c.row.id);
    sg_conns_remove(f.t, &a.row);
    sg_conns_remove(f.t, &c.row);
    sg_conns_remove(f.t, &d.row);
    assert_int_equal(sg_conns_count(f.t), 0);
    done(&f);
}

/* ---- admission ------------------------------------------------------------- */

static void test_node_cap(void **state)
{
    fixture f = make(2, 0);
    item a = {0}, b = {0}, c = {0}, d = {0};
    assert_null(accept_one(f.t, &a, "10.0.0.1", false));
    assert_null(accept_one(f.t, &b, "10.0.0.2", false));
    assert_int_equal(sg_conns_admitted(f.t), 2);
    /* Refused at accept: registered (its 503 still has to leave) but not
     * counted, so it holds no place against the cap. */
    assert_string_equal(accept_one(f.t, &c, "10.0.0.3", false), "max_connections");
    assert_false(c.row.admitted);
    assert_int_equal(sg_conns_admitted(f.t), 2);
    assert_int_equal(sg_conns_count(f.t), 3);
    sg_conns_remove(f.t, &c.row);
    assert_int_equal(sg_conns_admitted(f.t), 2);
    /* One goes: one place frees. */
    sg_conns_remove(f.t, &a.row);
    assert_int_equal(sg_conns_admitted(f.t), 1);
    assert_null(accept_one(f.t, &d, "10.0.0.4", false));
    sg_conns_remove(f.t, &b.row);
    sg_conns_remove(f.t, &d.row);
    assert_int_equal(sg_conns_admitted(f.t), 0);
    done(&f);
}

static void test_per_ip_cap(void **state)
{
    fixture f = make(100, 2);
    item a1 = {0}, a2 = {0}, a3 = {0}, b1 = {0}, p = {0};
    assert_null(accept_one(f.t, &a1, "10.0.0.1", false));
    assert_null(accept_one(f.t, &a2, "10.0.0.1", false));
    assert_int_equal(sg_conns_ip_count(f.t, "10.0.0.1"), 2);
    assert_string_equal(accept_one(f.t, &a3, "10.0.0.1", false), "max_connections_per_ip");
    assert_int_equal(sg_conns_ip_count(f.t, "10.0.0.1"), 2);
    sg_conns_remove(f.t, &a3.row);
    /* Another address is not held back. */
    assert_null(accept_one(f.t, &b1, "10.0.0.2", false));
    /* A trusted proxy's own address is exempt at accept, and counted. */
    assert_null(accept_one(f.t, &p, "10.0.0.1", true));
    assert_int_equal(sg_conns_ip_count(f.t, "10.0.0.1"), 3);
    /* An address leaves the counts with its last connection. */
    sg_conns_remove(f.t, &a1.row);
    sg_conns_remove(f.t, &a2.row);
    sg_conns_remove(f.t, &p.row);
    assert_int_equal(sg_conns_ip_count(f.t, "10.0.0.1"), 0);
    sg_conns_remove(f.t, &b1.row);
    assert_int_equal(sg_conns_ip_count(f.t, "10.0.0.2"), 0);
    assert_int_equal(sg_conns_admitted(f.t), 0);
    done(&f);
}

/* The node-wide cap is named first when both would refuse. */
static void test_node_cap_first(void **state)
{
    fixture f = make(1, 1);
    item a = {0}, b = {0};
    assert_null(accept_one(f.t, &a, "10.0.0.1", false));
    assert_string_equal(accept_one(f.t, &b, "10.0.0.1", false), "max_connections");
    sg_conns_remove(f.t, &b.row);
    sg_conns_remove(f.t, &a.row);
    done(&f);
}

static void test_per_ip_off_keeps_no_counts(void **state)
{
    fixture f = make(100, 0);
    item it[5];
    memset(it, 0, sizeof it);
    for (int i = 0; i < 5; i++)
        assert_null(accept_one(f.t, &it[i], "10.0.0.1", false));
    assert_int_equal(sg_conns_ip_count(f.t, "10.0.0.1"), 0);
    assert_false(sg_conns_over_ip_cap(f.t, &it[0].row));
    for (int i = 0; i < 5; i++)
        sg_conns_remove(f.t, &it[i].row);
    assert_int_equal(sg_conns_admitted(f.t), 0);
    done(&f);
}

/* Behind a trusted proxy the count moves from the proxy's address to its
 * client's, and the per-IP cap is then judged on the client's. */
static void test_move_ip(void **state)
{
    fixture f = make(100, 1);
    item direct = {0}, via = {0};
    assert_null(accept_one(f.t, &direct, "192.0.2.7", false));
    assert_null(accept_one(f.t, &via, "10.9.9.9", true));
    assert_false(sg_conns_over_ip_cap(f.t, &via.row));
    sg_conns_move_ip(f.t, &via.row, "192.0.2.7");
    assert_string_equal(via.row.ip, "192.0.2.7");
    assert_int_equal(sg_conns_ip_count(f.t, "10.9.9.9"), 0);
    assert_int_equal(sg_conns_ip_count(f.t, "192.0.2.7"), 2);
    assert_true(sg_conns_over_ip_cap(f.t, &via.row));
    /* Going, it takes its count off the client's address, not the proxy's. */
    sg_conns_remove(f.t, &via.row);
    assert_int_equal(sg_conns_ip_count(f.t, "192.0.2.7"), 1);
    assert_false(sg_conns_over_ip_cap(f.t, &direct.row));
    sg_conns_remove(f.t, &direct.row);
    assert_int_equal(sg_conns_ip_count(f.t, "192.0.2.7"), 0);
    assert_int_equal(sg_conns_admitted(f.t), 0);
    done(&f);
}

/* ---- flush pass ------------------------------------------------------------- */

/* Queued twice, flushed once, from the loop (never inside the call that
 * queued it); a cancelled entry (the middle one of three, and the first
 * one: the list is relinked both ways) is not flushed; one queued during
 * the pass is flushed in the same pass. */
static void test_flush_pass(void **state)
{
    fixture f = make(100, 0);
    item a = {0}, b = {0}, c = {0}, d = {0};
    sg_conns_want_flush(f.t, &a.row);
    sg_conns_want_flush(f.t, &b.row);
    sg_conns_want_flush(f.t, &c.row);
    sg_conns_want_flush(f.t, &a.row);
    assert_int_equal(a.flushed, 0);
    sg_conns_cancel_flush(f.t, &b.row);
    sg_conns_cancel_flush(f.t, &b.row); /* idempotent */
    sg_conns_cancel_flush(f.t, &d.row); /* never queued */
    event_base_loop(f.base, EVLOOP_NONBLOCK);
    assert_int_equal(a.flushed, 1);
    assert_int_equal(b.flushed, 0);
    assert_int_equal(c.flushed, 1);
    assert_int_equal(d.flushed, 0);
    /* Off the list after its flush: queued again, flushed again. */
    a.flush_on_flush = &d;
    sg_conns_want_flush(f.t, &a.row);
    sg_conns_want_flush(f.t, &c.row);
    sg_conns_cancel_flush(f.t, &c.row); /* the head */
    event_base_loop(f.base, EVLOOP_NONBLOCK);
    assert_int_equal(a.flushed, 2);
    assert_int_equal(c.flushed, 1);
    assert_int_equal(d.flushed, 1);
    assert_null(a.row.fpprev);
    assert_null(d.row.fpprev);
    done(&f);
}

/* ---- deferred pass ------------------------------------------------------------ */

static void test_defer_once(void **state)
{
    fixture f = make(100, 0);
    item a = {0};
    sg_conns_add(f.t, &a.row, "10.0.0.1");
    assert_false(sg_conns_pending(f.t));
    sg_conns_defer(f.t, &a.row);
    sg_conns_defer(f.t, &a.row);
    /* Nothing runs inside the call that queued it. */
    assert_int_equal(a.released, 0);
    assert_true(sg_conns_pending(f.t));
    /* The pass runs from the loop. */
    event_base_loop(f.base, EVLOOP_NONBLOCK);
    assert_int_equal(a.released, 1);
    assert_false(sg_conns_pending(f.t));
    /* Queued again after its pass: released again. */
    sg_conns_defer(f.t, &a.row);
    sg_conns_run_deferred(f.t);
    assert_int_equal(a.released, 2);
    sg_conns_remove(f.t, &a.row);
    done(&f);
}

/* A release may queue others (a session close that cuts another
 * connection), and the one being released again (it is off the list by
 * then): all of it is done in the same pass. */
static void test_defer_during_pass(void **state)
{
    fixture f = make(100, 0);
    item a = {0}, b = {0}, c = {0};
    sg_conns_add(f.t, &a.row, "10.0.0.1");
    sg_conns_add(f.t, &b.row, "10.0.0.2");
    sg_conns_add(f.t, &c.row, "10.0.0.3");
    a.defer_on_release = &b;
    b.defer_on_release = &a;
    c.defer_on_release = &c; /* cut during its own release */
    sg_conns_defer(f.t, &a.row);
    sg_conns_defer(f.t, &c.row);
    event_base_loop(f.base, EVLOOP_NONBLOCK);
    assert_false(sg_conns_pending(f.t));
    assert_int_equal(a.released, 2);
    assert_int_equal(b.released, 1);
    assert_int_equal(c.released, 2);
    sg_conns_remove(f.t, &a.row);
    sg_conns_remove(f.t, &b.row);
    sg_conns_remove(f.t, &c.row);
    done(&f);
}

/* ---- timers ---------------------------------------------------------------- */

static void arm_at(sg_conns *t, item *it, int64_t ms)
{
    it->armed_ms = sg_now_mono_ms();
    it->due_ms = it->armed_ms + (uint64_t)ms;
    sg_conns_arm(t, &it->row, ms);
}

static void test_timer_never_early(void **state)
{
    fixture f = make(100, 0);
    item a = {0}, b = {0};
    sg_conns_add(f.t, &a.row, "10.0.0.1");
    sg_conns_add(f.t, &b.row, "10.0.0.2");
    arm_at(f.t, &a, 60);
    arm_at(f.t, &b, 0);
    run_until(f.base, &b.fired, 1);
    run_until(f.base, &a.fired, 1);
    assert_int_equal(a.fired, 1);
    assert_int_equal(b.fired, 1);
    assert_true(a.fired_ms >= a.due_ms);
    assert_true(b.fired_ms >= b.due_ms);
    assert_null(a.row.wpprev); /* disarmed when it fired */
    /* Nothing armed: the wheel's timer is gone, the loop has nothing left. */
    assert_int_equal(event_base_loop(f.base, EVLOOP_NONBLOCK), 1);
    sg_conns_remove(f.t, &a.row);
    sg_conns_remove(f.t, &b.row);
    done(&f);
}

static void test_timer_disarm_and_rearm(void **state)
{
    fixture f = make(100, 0);
    item a = {0}, b = {0}, c = {0};
    sg_conns_add(f.t, &a.row, "10.0.0.1");
    sg_conns_add(f.t, &b.row, "10.0.0.2");
    sg_conns_add(f.t, &c.row, "10.0.0.3");
    arm_at(f.t, &a, 0);
    arm_at(f.t, &b, 0);
    sg_conns_disarm(f.t, &b.row);
    sg_conns_disarm(f.t, &b.row); /* idempotent */
    /* Re-arming replaces the deadline. */
    arm_at(f.t, &c, 10000);
    arm_at(f.t, &c, 50);
    c.rearm = 2; /* from its own callback, twice */
    run_until(f.base, &a.fired, 1);
    run_until(f.base, &c.fired, 3);
    assert_int_equal(c.rearm, 0);
    assert_true(c.fired_ms >= c.due_ms);
    assert_int_equal(a.fired, 1);
    assert_int_equal(b.fired, 0);
    assert_int_equal(c.fired, 3);
    assert_int_equal(event_base_loop(f.base, EVLOOP_NONBLOCK), 1);
    sg_conns_remove(f.t, &a.row);
    sg_conns_remove(f.t, &b.row);
    sg_conns_remove(f.t, &c.row);
    done(&f);
}

/* Two timers due in the same tick, each disarming the other when it fires
 * (an abort from one connection's timer ends another): exactly one fires. */
static void test_timer_disarm_during_tick(void **state)
{
    fixture f = make(100, 0);
    item a = {0}, b = {0};
    sg_conns_add(f.t, &a.row, "10.0.0.1");
    sg_conns_add(f.t, &b.row, "10.0.0.2");
    a.disarm_on_fire = &b;
    b.disarm_on_fire = &a;
    arm_at(f.t, &a, 0);
    arm_at(f.t, &b, 0);
    int any = 0;
    for (int i = 0; i < 2000 && !any; i++) {
        event_base_loop(f.base, EVLOOP_ONCE);
        any = a.fired + b.fired;
    }
    assert_int_equal(a.fired + b.fired, 1);
    assert_null(a.row.wpprev);
    assert_null(b.row.wpprev);
    assert_int_equal(event_base_loop(f.base, EVLOOP_NONBLOCK), 1);
    sg_conns_remove(f.t, &a.row);
    sg_conns_remove(f.t, &b.row);
    done(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_node_cap),
        cmocka_unit_test(test_per_ip_cap),
        cmocka_unit_test(test_node_cap_first),
        cmocka_unit_test(test_per_ip_off_keeps_no_counts),
        cmocka_unit_test(test_move_ip),
        cmocka_unit_test(test_flush_pass),
        cmocka_unit_test(test_defer_once),
        cmocka_unit_test(test_defer_during_pass),
        cmocka_unit_test(test_timer_never_early),
        cmocka_unit_test(test_timer_disarm_and_rearm),
        cmocka_unit_test(test_timer_disarm_during_tick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
