/* SPDX-License-Identifier: Apache-2.0 */
/* static_files: serves a directory (the demo page and the JS client) on the
 * public listener when SIGNAL_STATIC_DIR is set, so the page and /ws share
 * an origin. GET/HEAD only, no directory listing, no path outside the root,
 * no symlink anywhere in a path below it. */
#ifndef SG_STATIC_FILES_H
#define SG_STATIC_FILES_H

#include <stdbool.h>
#include "sg/http_upgrade.h"

struct bufferevent;

#define SG_STATIC_MAX_FILE (4u << 20)

/* Writes a complete response (200, 404 or 405) for req into bev. Returns
 * false only when the request is not for the static tree at all (never, for
 * now: every non-/ws path is answered). */
bool sg_static_serve(struct bufferevent *bev, const char *root, const sg_http_request *req);

/* Maps a request path to a relative file path under the root; false when
 * the path is unsafe (.., NUL, backslash, %-escapes) or too long. Pure. */
bool sg_static_resolve(const char *path, size_t n, char *out, size_t cap);

/* Opens rel (as sg_static_resolve makes it) beneath the directory rootfd
 * for reading, never following a symlink in any component and never leaving
 * rootfd: openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), or
 * sg_static_open_walk where the kernel lacks openat2. Returns a descriptor
 * or -1 with errno set. */
int sg_static_open_beneath(int rootfd, const char *rel);

/* The same, one component at a time with O_NOFOLLOW (exported for tests). */
int sg_static_open_walk(int rootfd, const char *rel);

#endif
