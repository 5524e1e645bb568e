/* scripts: the Lua operation scripts (lua/ directory, embedded at build time). The
 * order of sg_script_sources matches sg_script_id. */
#ifndef SG_SCRIPTS_H
#define SG_SCRIPTS_H

#include <stddef.h>

typedef enum {
    SG_SCRIPT_JOIN = 0,
    SG_SCRIPT_LEAVE,
    SG_SCRIPT_RELAY,
    SG_SCRIPT_REFRESH,
    SG_SCRIPT_RESUME,
    SG_SCRIPT_CATCHUP,
    SG_SCRIPT_COUNT
} sg_script_id;

typedef struct sg_script_src {
    const char *name;
    const char *text;
    size_t len;
} sg_script_src;

extern const sg_script_src sg_script_sources[];
extern const size_t sg_script_count;

#endif
