/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/static_files.h"
#include "sg/buf.h"
#include "sg/util.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(SYS_openat2) && __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#define HAVE_OPENAT2 1
#endif

bool sg_static_resolve(const char *path, size_t n, char *out, size_t cap)
{
    if (cap < 32 || n == 0 || path[0] != '/' || n >= cap - 16)
        return false;
    size_t o = 0;
    size_t i = 1;
    while (i <= n) {
        size_t j = i;
        while (j < n && path[j] != '/')
            j++;
        size_t seg = j - i;
        const char *sp = path + i;
        if (seg == 2 && sp[0] == '.' && sp[1] == '.')
            return false;
        if (seg > 1 && sp[0] == '.')
            return false; /* no dotfiles (.git, .env) */
        for (size_t k = 0; k < seg; k++) {
            char ch = sp[k];
            if (ch == '\0' || ch == '\\' || ch == '%' || (unsigned char)ch < 0x20 || ch == 0x7f)
                return false;
        }
        if (seg && !(seg == 1 && sp[0] == '.')) {
            if (o)
                out[o++] = '/';
            memcpy(out + o, sp, seg);
            o += seg;
        }
        i = j + 1;
    }
    out[o] = '\0';
    if (o == 0 || path[n - 1] == '/') {
        const char *idx = o ? "/index.html" : "index.html";
        memcpy(out + o, idx, strlen(idx) + 1);
    }
    return true;
}

/* ---- opening beneath the root ------------------------------------------ */

/* O_NONBLOCK: a FIFO planted in the root must not stall the loop. */
#define FILE_FLAGS (O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)

/* The shape sg_static_resolve produces: relative, components separated by
 * single slashes, none of them "." or "..". Checked again here so that the
 * openers' guarantee does not rest on their caller. */
static bool rel_is_clean(const char *rel)
{
    if (!*rel)
        return false;
    for (const char *p = rel;;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return false;
        if (!e)
            return true;
        p = e + 1;
    }
}

int sg_static_open_walk(int rootfd, const char *rel)
{
    if (!rel_is_clean(rel)) {
        errno = ENOENT;
        return -1;
    }
    /* Each directory is opened relative to the one before with O_NOFOLLOW,
     * so no component can be a symlink, and each step holds the directory
     * it found: swapping a component for a symlink afterwards changes
     * nothing. O_PATH needs only search permission, like a path lookup. */
    int dir = rootfd;
    const char *p = rel;
    for (;;) {
        const char *e = strchr(p, '/');
        if (!e)
            break;
        char name[NAME_MAX + 1];
        size_t n = (size_t)(e - p);
        if (n > NAME_MAX) {
            if (dir != rootfd)
                close(dir);
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(name, p, n);
        name[n] = '\0';
        int next = openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int saved = errno;
        if (dir != rootfd)
            close(dir);
        if (next < 0) {
            errno = saved;
            return -1;
        }
        dir = next;
        p = e + 1;
    }
    int fd = openat(dir, p, FILE_FLAGS);
    int saved = errno;
    if (dir != rootfd)
        close(dir);
    errno = saved;
    return fd;
}

int sg_static_open_beneath(int rootfd, const char *rel)
{
    if (!rel_is_clean(rel)) {
        errno = ENOENT;
        return -1;
    }
#ifdef HAVE_OPENAT2
    /* One call that the kernel resolves without following any symlink and
     * without leaving rootfd, whatever the path holds. */
    struct open_how how = {.flags = FILE_FLAGS, .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS};
    long fd = syscall(SYS_openat2, rootfd, rel, &how, sizeof how);
    if (fd >= 0)
        return (int)fd;
    /* ENOSYS: a kernel before 5.6. EPERM: a seccomp filter of a container
     * runtime older than openat2 refuses what it does not know. The walk
     * is as strict, only slower. */
    if (errno != ENOSYS && errno != EPERM)
        return -1;
#endif
    return sg_static_open_walk(rootfd, rel);
}

static const char *content_type(const char *p)
{
    static const struct { const char *ext, *type; } T[] = {
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".json", "application/json"}, {".png", "image/png"}, {".svg", "image/svg+xml"},
        {".ico", "image/x-icon"}, {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(p, '.');
    if (dot)
        for (size_t i = 0; i < sizeof T / sizeof *T; i++)
            if (strcmp(dot, T[i].ext) == 0)
                return T[i].type;
    return "application/octet-stream";
}

/* Responses are built in a growable sg_buf rather than a fixed stack buffer:
 * snprintf into a fixed buffer returns the length it wanted, not the length
 * it wrote, and writing that many bytes once sent the stack after a long
 * redirect (issue 12, finding 8). */
static void send_buf(struct bufferevent *bev, sg_buf *b)
{
    bufferevent_write(bev, b->data, b->len);
    sg_buf_free(b);
}

static void simple(struct bufferevent *bev, int status, const char *reason, bool head)
{
    sg_buf b;
    sg_buf_init(&b);
    sg_buf_printf(&b,
                  "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s"
                  "Connection: close\r\n\r\n%s%s",
                  status, reason, strlen(reason) + 1, status == 405 ? "Allow: GET, HEAD\r\n" : "",
                  head ? "" : reason, head ? "" : "\n");
    send_buf(bev, &b);
}

bool sg_static_serve(struct bufferevent *bev, const char *root, const sg_http_request *req)
{
    bool head = req->method.n == 4 && memcmp(req->method.p, "HEAD", 4) == 0;
    if (!head && !(req->method.n == 3 && memcmp(req->method.p, "GET", 3) == 0)) {
        simple(bev, 405, "Method Not Allowed", false);
        return true;
    }
    char rel[1024];
    if (!sg_static_resolve(req->path.p, req->path.n, rel, sizeof rel)) {
        simple(bev, 404, "Not Found", head);
        return true;
    }
    /* The root itself may be a symlink: the operator chose it. */
    int rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int fd = rootfd >= 0 ? sg_static_open_beneath(rootfd, rel) : -1;
    if (rootfd >= 0)
        close(rootfd);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) != 0) {
        close(fd);
        fd = -1;
    }
    if (fd >= 0 && S_ISDIR(st.st_mode)) {
        /* A directory without the trailing slash: send the browser there, so
         * relative imports resolve. */
        close(fd);
        /* Built from the cleaned path: "//host" must not become an
         * off-site redirect. */
        /* The query goes along (the demo reads its parameters from it);
         * it cannot hold CR/LF: the HTTP parser refused control bytes. */
        sg_buf b;
        sg_buf_init(&b);
        sg_buf_printf(&b,
                      "HTTP/1.1 301 Moved Permanently\r\nLocation: /%s/%s%.*s\r\nContent-Length: 0\r\n"
                      "Connection: close\r\n\r\n",
                      rel, req->query.n ? "?" : "", (int)(req->query.n < 512 ? req->query.n : 0), req->query.p);
        send_buf(bev, &b);
        return true;
    }
    if (fd < 0 || !S_ISREG(st.st_mode) || st.st_size > SG_STATIC_MAX_FILE) {
        if (fd >= 0)
            close(fd);
        simple(bev, 404, "Not Found", head);
        return true;
    }
    sg_buf hdr;
    sg_buf_init(&hdr);
    sg_buf_printf(&hdr,
                  "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %lld\r\n"
                  "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n"
                  "Connection: close\r\n\r\n",
                  content_type(rel), (long long)st.st_size);
    struct evbuffer *out = bufferevent_get_output(bev);
    send_buf(bev, &hdr);
    if (!head && st.st_size > 0)
        evbuffer_add_file(out, fd, 0, st.st_size); /* takes the fd */
    else
        close(fd);
    return true;
}
