// A plugin written in C (clang + wasi-libc + `wit-bindgen c`): the http role, and a host
// call (the clock). Built by `cargo xtask plugins` when clang-22 and wasi-libc exist.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_plugin.h"

static char greeting[64] = "Hello";

static void set_body(exports_apiary_plugin_http_response_t *ret, const char *text) {
    size_t n = strlen(text);
    ret->body.ptr = malloc(n);
    memcpy(ret->body.ptr, text, n);
    ret->body.len = n;
}

static void json_header(exports_apiary_plugin_http_response_t *ret) {
    ret->headers.len = 1;
    ret->headers.ptr = malloc(sizeof(http_plugin_tuple2_string_string_t));
    http_plugin_string_dup(&ret->headers.ptr[0].f0, "content-type");
    http_plugin_string_dup(&ret->headers.ptr[0].f1, "application/json");
}

bool exports_apiary_plugin_lifecycle_init(http_plugin_string_t *config,
                                          exports_apiary_plugin_lifecycle_init_error_t *err) {
    // The config is JSON; this plugin only looks for "greeting":"..." (no JSON library).
    char buf[512];
    size_t n = config->len < sizeof buf - 1 ? config->len : sizeof buf - 1;
    memcpy(buf, config->ptr, n);
    buf[n] = 0;
    http_plugin_string_free(config);
    const char *key = strstr(buf, "\"greeting\":\"");
    if (key) {
        key += strlen("\"greeting\":\"");
        const char *end = strchr(key, '"');
        if (!end || (size_t)(end - key) >= sizeof greeting) {
            err->tag = EXPORTS_APIARY_PLUGIN_LIFECYCLE_INIT_ERROR_INVALID_CONFIG;
            http_plugin_string_dup(&err->val.invalid_config, "greeting must be a short string");
            return false;
        }
        memcpy(greeting, key, end - key);
        greeting[end - key] = 0;
    }
    return true;
}

void exports_apiary_plugin_http_handle(exports_apiary_plugin_http_request_t *req,
                                       exports_apiary_plugin_http_response_t *ret) {
    char path[256];
    size_t n = req->path.len < sizeof path - 1 ? req->path.len : sizeof path - 1;
    memcpy(path, req->path.ptr, n);
    path[n] = 0;
    char body[512];
    json_header(ret);
    if (strncmp(path, "/hello/", 7) == 0 && strchr(path + 7, '/') == NULL) {
        snprintf(body, sizeof body, "{\"message\":\"%s, %s!\",\"language\":\"c\"}", greeting, path + 7);
        ret->status = 200;
    } else if (strcmp(path, "/now") == 0) {
        snprintf(body, sizeof body, "{\"now_ms\":%lld}", (long long)apiary_plugin_clock_now_ms());
        ret->status = 200;
    } else {
        snprintf(body, sizeof body, "{\"code\":\"NOT_FOUND\",\"message\":\"no route\"}");
        ret->status = 404;
    }
    set_body(ret, body);
    exports_apiary_plugin_http_request_free(req);
}
