/* SPDX-License-Identifier: Apache-2.0 */
/* slots: CRC16 slot hashing, CLUSTER SHARDS parsing and redirections,
 * checked against what a real Redis 7.0 cluster answered (CLUSTER KEYSLOT,
 * and a CLUSTER SHARDS reply of a 3-master, 3-replica cluster captured
 * byte for byte). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "sg/slots.h"

/* redis-cli -p 7101 CLUSTER SHARDS, captured from redis-server 7.0.15 */
static const char SHARDS[] =
    "*3\r\n"
    "*4\r\n"
    "$5\r\n"
    "slots\r\n"
    "*2\r\n"
    ":5461\r\n"
    ":10922\r\n"
    "$5\r\n"
    "nodes\r\n"
    "*2\r\n"
    "*14\r\n"
    "$2\r\n"
    "id\r\n"
    "$40\r\n"
    "c6ca404d38d8dbd71c135e7115a86491f0e878bb\r\n"
    "$4\r\n"
    "port\r\n"
    ":7102\r\n"
    "$2\r\n"
    "ip\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$8\r\n"
    "endpoint\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$4\r\n"
    "role\r\n"
    "$6\r\n"
    "master\r\n"
    "$18\r\n"
    "replication-offset\r\n"
    ":42\r\n"
    "$6\r\n"
    "health\r\n"
    "$6\r\n"
    "online\r\n"
    "*14\r\n"
    "$2\r\n"
    "id\r\n"
    "$40\r\n"
    "4c1f06d9e459dadfc14392c149ece054e1ddcac9\r\n"
    "$4\r\n"
    "port\r\n"
    ":7106\r\n"
    "$2\r\n"
    "ip\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$8\r\n"
    "endpoint\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$4\r\n"
    "role\r\n"
    "$7\r\n"
    "replica\r\n"
    "$18\r\n"
    "replication-offset\r\n"
    ":42\r\n"
    "$6\r\n"
    "health\r\n"
    "$6\r\n"
    "online\r\n"
    "*4\r\n"
    "$5\r\n"
    "slots\r\n"
    "*2\r\n"
    ":0\r\n"
    ":5460\r\n"
    "$5\r\n"
    "nodes\r\n"
    "*2\r\n"
    "*14\r\n"
    "$2\r\n"
    "id\r\n"
    "$40\r\n"
    "f9cefe083f778848a4ceaead36314279f4fa5ac1\r\n"
    "$4\r\n"
    "port\r\n"
    ":7101\r\n"
    "$2\r\n"
    "ip\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$8\r\n"
    "endpoint\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$4\r\n"
    "role\r\n"
    "$6\r\n"
    "master\r\n"
    "$18\r\n"
    "replication-offset\r\n"
    ":42\r\n"
    "$6\r\n"
    "health\r\n"
    "$6\r\n"
    "online\r\n"
    "*14\r\n"
    "$2\r\n"
    "id\r\n"
    "$40\r\n"
    "708f347d1ec535a37ee7a276b42aa7a272951306\r\n"
    "$4\r\n"
    "port\r\n"
    ":7105\r\n"
    "$2\r\n"
    "ip\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$8\r\n"
    "endpoint\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$4\r\n"
    "role\r\n"
    "$7\r\n"
    "replica\r\n"
    "$18\r\n"
    "replication-offset\r\n"
    ":42\r\n"
    "$6\r\n"
    "health\r\n"
    "$6\r\n"
    "online\r\n"
    "*4\r\n"
    "$5\r\n"
    "slots\r\n"
    "*2\r\n"
    ":10923\r\n"
    ":16383\r\n"
    "$5\r\n"
    "nodes\r\n"
    "*2\r\n"
    "*14\r\n"
    "$2\r\n"
    "id\r\n"
    "$40\r\n"
    "0f06ca311c0aef422042cbf22a3d7d353e168c8f\r\n"
    "$4\r\n"
    "port\r\n"
    ":7103\r\n"
    "$2\r\n"
    "ip\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$8\r\n"
    "endpoint\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$4\r\n"
    "role\r\n"
    "$6\r\n"
    "master\r\n"
    "$18\r\n"
    "replication-offset\r\n"
    ":42\r\n"
    "$6\r\n"
    "health\r\n"
    "$6\r\n"
    "online\r\n"
    "*14\r\n"
    "$2\r\n"
    "id\r\n"
    "$40\r\n"
    "44b4491ce3770920a6cb91a0fb894eb80bf8836c\r\n"
    "$4\r\n"
    "port\r\n"
    ":7104\r\n"
    "$2\r\n"
    "ip\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$8\r\n"
    "endpoint\r\n"
    "$9\r\n"
    "127.0.0.1\r\n"
    "$4\r\n"
    "role\r\n"
    "$7\r\n"
    "replica\r\n"
    "$18\r\n"
    "replication-offset\r\n"
    ":42\r\n"
    "$6\r\n"
    "health\r\n"
    "$6\r\n"
    "online\r\n";

static redisReply *parse(const char *resp, size_t len)
{
    redisReader *r = redisReaderCreate();
    void *out = NULL;
    assert_int_equal(redisReaderFeed(r, resp, len), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &out), REDIS_OK);
    redisReaderFree(r);
    assert_non_null(out);
    return out;
}

static void test_key_slots_match_redis(void **state)
{
    static const struct { const char *key; uint16_t slot; } K[] = {
        /* CLUSTER KEYSLOT on the real cluster */
        {"foo", 12182}, {"hello", 866}, {"somekey", 11058}, {"{user1000}.following", 3443},
        {"foo{}{bar}", 8363}, {"foo{{bar}}zap", 4015}, {"foo{bar}{zap}", 5061}, {"room:{demo}:peers", 903},
        {"123456789", 12739},
    };
    for (size_t i = 0; i < sizeof K / sizeof *K; i++)
        assert_int_equal(sg_key_slot(K[i].key, strlen(K[i].key)), K[i].slot);
    assert_int_equal(sg_crc16("123456789", 9), 0x31C3); /* the XMODEM check value */
    /* a room's keys and its peers' channels share one slot */
    assert_int_equal(sg_key_slot("room:{a/b-1}:peers", 18), sg_key_slot("room:{a/b-1}:peer:x", 19));
    assert_int_equal(sg_key_slot("{", 1), sg_crc16("{", 1) & 16383);
    assert_int_equal(sg_key_slot("", 0), 0);
}

static void test_cluster_shards_parse(void **state)
{
    redisReply *r = parse(SHARDS, sizeof SHARDS - 1);
    static sg_slot_map m;
    char err[128];
    assert_int_equal(sg_slot_map_parse(&m, r, false, NULL, err, sizeof err), 0);
    assert_int_equal(m.nshards, 3);
    assert_true(sg_slot_map_complete(&m));
    int s0 = sg_slot_owner(&m, 0), s1 = sg_slot_owner(&m, 5461), s2 = sg_slot_owner(&m, 16383);
    assert_true(s0 >= 0 && s1 >= 0 && s2 >= 0 && s0 != s1 && s1 != s2 && s0 != s2);
    assert_int_equal(sg_slot_owner(&m, 5460), s0);
    assert_int_equal(sg_slot_owner(&m, 10922), s1);
    assert_int_equal(sg_slot_owner(&m, 10923), s2);
    assert_string_equal(m.shard[s0].host, "127.0.0.1");
    assert_int_equal(m.shard[s0].port, 7101);
    assert_int_equal(m.shard[s1].port, 7102);
    assert_int_equal(m.shard[s2].port, 7103);
    assert_int_equal(strlen(m.shard[s0].id), 40);
    /* no tls-port in this cluster: with TLS asked for, no shard is usable */
    assert_int_equal(sg_slot_map_parse(&m, r, true, NULL, err, sizeof err), 0);
    assert_int_equal(m.nshards, 0);
    assert_false(sg_slot_map_complete(&m));
    freeReplyObject(r);
    /* not a shard list */
    r = parse(":1\r\n", 4);
    assert_int_equal(sg_slot_map_parse(&m, r, false, NULL, err, sizeof err), -1);
    freeReplyObject(r);
}

static void test_a_shard_without_a_master_leaves_its_slots_unserved(void **state)
{
    static const char one[] = "*1\r\n*4\r\n$5\r\nslots\r\n*4\r\n:0\r\n:99\r\n:200\r\n:200\r\n$5\r\nnodes\r\n*1\r\n*6\r\n"
                              "$4\r\nrole\r\n$7\r\nreplica\r\n$2\r\nip\r\n$1\r\nh\r\n$4\r\nport\r\n:1\r\n";
    redisReply *r = parse(one, sizeof one - 1);
    static sg_slot_map m;
    char err[64];
    assert_int_equal(sg_slot_map_parse(&m, r, false, NULL, err, sizeof err), 0);
    assert_int_equal(m.nshards, 0);
    assert_int_equal(sg_slot_owner(&m, 50), -1);
    freeReplyObject(r);
}

/* A one-node cluster (every slot on it, as a small managed Redis Cluster
 * is) never met a peer and does not know its own address: its CLUSTER
 * SHARDS answer (from Redis 7.0) has an empty endpoint and ip. The node is
 * the one asked. */
static void test_a_node_that_does_not_know_its_address_is_the_one_asked(void **state)
{
    static const char one[] =
        "*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n*14\r\n"
        "$2\r\nid\r\n$40\r\nffe189c281c3864cea482284edb0a11f6b3bebf8\r\n$4\r\nport\r\n:24001\r\n"
        "$2\r\nip\r\n$0\r\n\r\n$8\r\nendpoint\r\n$0\r\n\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
        "$18\r\nreplication-offset\r\n:0\r\n$6\r\nhealth\r\n$6\r\nonline\r\n";
    redisReply *r = parse(one, sizeof one - 1);
    static sg_slot_map m;
    char err[64];
    assert_int_equal(sg_slot_map_parse(&m, r, false, "redis.internal", err, sizeof err), 0);
    assert_int_equal(m.nshards, 1);
    assert_true(sg_slot_map_complete(&m));
    assert_string_equal(m.shard[0].host, "redis.internal");
    assert_int_equal(m.shard[0].port, 24001);
    /* nobody to fall back on: unusable, not an empty host name */
    assert_int_equal(sg_slot_map_parse(&m, r, false, NULL, err, sizeof err), 0);
    assert_int_equal(m.nshards, 0);
    freeReplyObject(r);
}

static void test_tags_for_each_shard(void **state)
{
    redisReply *r = parse(SHARDS, sizeof SHARDS - 1);
    static sg_slot_map m;
    char err[64], tag[8];
    assert_int_equal(sg_slot_map_parse(&m, r, false, NULL, err, sizeof err), 0);
    for (int s = 0; s < (int)m.nshards; s++) {
        assert_true(sg_slot_tag_for(&m, s, tag));
        char key[32];
        int n = snprintf(key, sizeof key, "signal:probe:{%s}:x", tag);
        assert_int_equal(sg_slot_owner(&m, sg_key_slot(key, (size_t)n)), s);
    }
    assert_false(sg_slot_tag_for(&m, 7, tag));
    freeReplyObject(r);
}

static void test_redirections(void **state)
{
    sg_redirect d;
    static const char moved[] = "MOVED 3999 127.0.0.1:6381";
    assert_true(sg_redirect_parse(moved, sizeof moved - 1, &d));
    assert_false(d.ask);
    assert_int_equal(d.slot, 3999);
    assert_string_equal(d.host, "127.0.0.1");
    assert_int_equal(d.port, 6381);
    static const char ask[] = "ASK 16383 [::1]:7000";
    assert_true(sg_redirect_parse(ask, sizeof ask - 1, &d));
    assert_true(d.ask);
    assert_string_equal(d.host, "::1");
    assert_int_equal(d.port, 7000);
    static const char *bad[] = {"MOVED", "MOVED 1", "MOVED x h:1", "MOVED 16384 h:1", "MOVED 1 h", "MOVED 1 h:0",
                                "MOVED 1 :80", "ERR wrong", "MOVED 1 h:1 extra", "READONLY You can't write"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(sg_redirect_parse(bad[i], strlen(bad[i]), &d));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_slots_match_redis),
        cmocka_unit_test(test_cluster_shards_parse),
        cmocka_unit_test(test_a_shard_without_a_master_leaves_its_slots_unserved),
        cmocka_unit_test(test_a_node_that_does_not_know_its_address_is_the_one_asked),
        cmocka_unit_test(test_tags_for_each_shard),
        cmocka_unit_test(test_redirections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
