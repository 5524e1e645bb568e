/* SPDX-License-Identifier: Apache-2.0 */
/* control: the subcommands kick, close-room and revoke (PROTOCOL.md §9
 * "Backend control"): one FCALL of lua/control.lua each (ops.h lays the
 * calls out), over a blocking connection (redis_sync.h) found from the server's own
 * SIGNAL_REDIS_* settings: the URL, Sentinel, or cluster seeds (a MOVED or
 * ASK answer is followed, so a room's call reaches the node of its slot).
 *
 * Exit codes: 0 done (kick: the peer was a member), 1 kick: the peer was
 * not a member, 2 usage or configuration error, 3 Redis unreachable or it
 * refused the call. Each action prints one JSON log line on stdout
 * (control.kick, control.close_room, control.revoke; a user only as its
 * keyed hash). */
#ifndef SG_CONTROL_H
#define SG_CONTROL_H

#include <stdbool.h>

/* argv[1] names one of the subcommands. */
bool sg_control_is_command(const char *name);
/* Runs it; returns the exit code. */
int sg_control_main(int argc, char **argv);

#endif
