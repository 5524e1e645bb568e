/* SPDX-License-Identifier: Apache-2.0 */
/* scripts: the gateway's Redis function library (lua/, embedded at build
 * time by cmake/embed_lua.cmake) and the names of its functions. The
 * library is loaded with FUNCTION LOAD once per Redis (bus.c) and every
 * operation is an FCALL of sg_functions_prefix + its name (ops.c). */
#ifndef SG_SCRIPTS_H
#define SG_SCRIPTS_H

#include <stddef.h>

/* One per lua/<name>.lua, in the order of SG_LUA_OPS in CMakeLists.txt. */
typedef enum {
    SG_FN_JOIN = 0,
    SG_FN_LEAVE,
    SG_FN_RELAY,
    SG_FN_RESUME,
    SG_FN_CATCHUP,
    SG_FN_REASSERT,
    SG_FN_EXPIRE,
    SG_FN_REAP,
    SG_FN_NODES,
    SG_FN_COUNT
} sg_fn;

/* "join", "leave", ...: the names the library registers after its prefix. */
extern const char *const sg_fn_names[SG_FN_COUNT];

extern const char sg_functions_library[];   /* "#!lua name=sg_<hash>\n..." */
extern const size_t sg_functions_library_len;
extern const char sg_functions_prefix[];    /* "sg_<hash>_" */

/* The backend control library (lua/control.lua, docs/backend-control.md):
 * a second one, with stable function names, loaded by the bus on every
 * master like the gateway's own. */
extern const char sg_control_library[];
extern const size_t sg_control_library_len;

#endif
