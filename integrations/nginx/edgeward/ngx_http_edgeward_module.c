/*
 * ngx_http_edgeward_module: edgeward inside nginx, through its C ABI (edgeward.h).
 *
 *   edgeward_policy PATH;   (http) the policy file, compiled when the configuration is
 *                           read (nginx -t, start, reload); workers inherit that engine
 *   edgeward on|off;        (http, server, location) inspect requests here
 *
 * In the precontent phase, after nginx's own access checks (allow/deny, auth_basic,
 * auth_request) have let the request in, the whole request body is read (keep it in
 * memory: client_body_buffer_size = client_max_body_size) and the request inspected.
 * A refusal is answered here with the decision's status, headers (Retry-After,
 * RateLimit) and a JSON body in the OpenAI error shape. An allowed request goes on, its
 * body rewritten when the policy clamps or strips parameters. The response is watched
 * on its way out: a JSON body's usage, or a server-sent-events stream fed chunk by chunk
 * to a usage tracker (never buffered), settles the request's reservation. A request
 * whose upstream failed is settled with zero usage; an aborted stream with what was
 * seen.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "edgeward.h"

/* The most of a JSON response kept to read its usage from. */
#define EDGEWARD_MAX_RESPONSE (1024 * 1024)

typedef struct {
    ngx_str_t   policy;
    ew_engine  *engine;    /* compiled from the policy with this configuration */
} ngx_http_edgeward_main_conf_t;

typedef struct {
    ngx_flag_t  enable;
} ngx_http_edgeward_loc_conf_t;

typedef struct {
    ngx_int_t          status;     /* the phase handler's answer once decided */
    unsigned           decided:1;
    unsigned           settled:1;
    unsigned           json:1;     /* a JSON response: keep it for its usage */
    unsigned           too_big:1;
    ew_decision       *decision;   /* of an allowed request, until the pool goes */
    ew_usage_tracker  *tracker;
    u_char            *resp;
    size_t             resp_len;
    size_t             resp_cap;
    ngx_http_request_t *request;
} ngx_http_edgeward_ctx_t;

static ngx_int_t ngx_http_edgeward_handler(ngx_http_request_t *r);
static void ngx_http_edgeward_body_ready(ngx_http_request_t *r);
static ngx_int_t ngx_http_edgeward_decide(ngx_http_request_t *r,
    ngx_http_edgeward_ctx_t *ctx);
static ngx_int_t ngx_http_edgeward_refuse(ngx_http_request_t *r, ew_decision *d);
static ngx_int_t ngx_http_edgeward_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message);
static void ngx_http_edgeward_settle(ngx_http_edgeward_ctx_t *ctx);
static void ngx_http_edgeward_settle_zero(ngx_http_edgeward_ctx_t *ctx);
static void ngx_http_edgeward_cleanup(void *data);
static ngx_int_t ngx_http_edgeward_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_edgeward_body_filter(ngx_http_request_t *r, ngx_chain_t *in);
static char *ngx_http_edgeward_policy(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static void *ngx_http_edgeward_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_edgeward_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_edgeward_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child);
static ngx_int_t ngx_http_edgeward_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_edgeward_init_process(ngx_cycle_t *cycle);
static void ngx_http_edgeward_exit_process(ngx_cycle_t *cycle);
static void ngx_http_edgeward_free_engine(void *data);

/* Per worker process: a reference to the configuration's engine and the one scratch
 * (workers are single-threaded). */
static ew_engine   *ngx_http_edgeward_engine;
static ew_scratch  *ngx_http_edgeward_scratch;

static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;

static ngx_command_t  ngx_http_edgeward_commands[] = {

    { ngx_string("edgeward_policy"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_edgeward_policy,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("edgeward"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_edgeward_loc_conf_t, enable),
      NULL },

      ngx_null_command
};

static ngx_http_module_t  ngx_http_edgeward_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_edgeward_init,                /* postconfiguration */
    ngx_http_edgeward_create_main_conf,    /* create main configuration */
    NULL,                                  /* init main configuration */
    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */
    ngx_http_edgeward_create_loc_conf,     /* create location configuration */
    ngx_http_edgeward_merge_loc_conf       /* merge location configuration */
};

ngx_module_t  ngx_http_edgeward_module = {
    NGX_MODULE_V1,
    &ngx_http_edgeward_module_ctx,         /* module context */
    ngx_http_edgeward_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_edgeward_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_edgeward_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* The context of a request, also after an internal redirect wiped the module's slot:
 * it is found again through the pool cleanup that owns it, so a request is never
 * inspected (or charged) twice. */
static ngx_http_edgeward_ctx_t *
ngx_http_edgeward_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t       *cln;
    ngx_http_edgeward_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_edgeward_module);
    if (ctx != NULL) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_edgeward_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_edgeward_module);
            return ctx;
        }
    }

    return NULL;
}


static ngx_int_t
ngx_http_edgeward_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_pool_cleanup_t            *cln;
    ngx_http_edgeward_ctx_t       *ctx;
    ngx_http_edgeward_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_edgeward_module);

    if (!lcf->enable || r != r->main) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_edgeward_get_ctx(r);
    if (ctx != NULL) {
        return ctx->decided ? ctx->status : NGX_DONE;
    }

    if (ngx_http_edgeward_engine == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "edgeward: no engine (edgeward_policy not set?)");
        /* Our own answer, then stop: NGX_OK would move on to the content phase and
         * let the request through after the 503. */
        rc = ngx_http_edgeward_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "guard_unavailable",
                                     "the request guard is not configured");
        ngx_http_finalize_request(r, rc);
        return NGX_DONE;
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_edgeward_ctx_t));
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = cln->data;
    ngx_memzero(ctx, sizeof(ngx_http_edgeward_ctx_t));
    ctx->request = r;
    cln->handler = ngx_http_edgeward_cleanup;
    ngx_http_set_ctx(r, ctx, ngx_http_edgeward_module);

    /* The body handler runs now (body already here) or later from the event loop; it
     * decides and either answers or restarts the phases. */
    rc = ngx_http_read_client_request_body(r, ngx_http_edgeward_body_ready);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    ngx_http_finalize_request(r, NGX_DONE);
    return NGX_DONE;
}


static void
ngx_http_edgeward_body_ready(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_http_edgeward_ctx_t  *ctx;

    ctx = ngx_http_edgeward_get_ctx(r);
    if (ctx == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_edgeward_decide(r, ctx);
    ctx->decided = 1;

    if (rc == NGX_DECLINED) {
        ctx->status = NGX_DECLINED;
        r->preserve_body = 1;
        r->write_event_handler = ngx_http_core_run_phases;
        ngx_http_core_run_phases(r);
        return;
    }

    /* Answered here: a re-entry (internal redirect) must not read NGX_OK as "allow". */
    ctx->status = NGX_DONE;
    ngx_http_finalize_request(r, rc);
}


/* The request body as one buffer: borrowed when nginx holds it in one, copied from
 * several in-memory buffers otherwise. NGX_DECLINED when part of it is in a file. */
static ngx_int_t
ngx_http_edgeward_body(ngx_http_request_t *r, u_char **data, size_t *len)
{
    size_t        n;
    u_char       *p;
    ngx_chain_t  *cl;

    *data = NULL;
    *len = 0;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    n = 0;
    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (cl->buf->in_file || !ngx_buf_in_memory(cl->buf)) {
            if (ngx_buf_size(cl->buf) > 0) {
                return NGX_DECLINED;
            }
            continue;
        }
        n += cl->buf->last - cl->buf->pos;
    }

    if (r->request_body->bufs->next == NULL) {
        *data = r->request_body->bufs->buf->pos;
        *len = n;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, n ? n : 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    *data = p;
    *len = n;
    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (ngx_buf_in_memory(cl->buf)) {
            p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
        }
    }

    return NGX_OK;
}


/* Replaces the request body by `body` (copied into the pool) for the upstream. */
static ngx_int_t
ngx_http_edgeward_set_body(ngx_http_request_t *r, const char *body, size_t len)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;
    u_char       *p;

    b = ngx_create_temp_buf(r->pool, len ? len : 1);
    cl = ngx_alloc_chain_link(r->pool);
    if (b == NULL || cl == NULL) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->pos, body, len);
    b->last_buf = 1;
    b->last_in_chain = 1;
    cl->buf = b;
    cl->next = NULL;
    r->request_body->bufs = cl;
    r->request_body->buf = b;
    r->headers_in.content_length_n = (off_t) len;

    if (r->headers_in.content_length) {
        p = ngx_pnalloc(r->pool, NGX_OFF_T_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }
        r->headers_in.content_length->value.data = p;
        r->headers_in.content_length->value.len = ngx_sprintf(p, "%O", (off_t) len) - p;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_edgeward_decide(ngx_http_request_t *r, ngx_http_edgeward_ctx_t *ctx)
{
    u_char            *body;
    size_t             body_len, n;
    ngx_uint_t         i;
    ngx_list_part_t   *part;
    ngx_table_elt_t   *h;
    ew_header         *headers;
    ew_request         req;
    ew_decision       *d;
    ew_status          st;
    ew_string          rewritten;

    switch (ngx_http_edgeward_body(r, &body, &body_len)) {
    case NGX_OK:
        break;
    case NGX_DECLINED:
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "edgeward: request body in a temporary file; set "
                      "client_body_buffer_size to client_max_body_size");
        return ngx_http_edgeward_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                       "body_too_large",
                                       "request body too large to inspect");
    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    n = 0;
    for (part = &r->headers_in.headers.part; part; part = part->next) {
        n += part->nelts;
    }

    headers = ngx_palloc(r->pool, (n ? n : 1) * sizeof(ew_header));
    if (headers == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    n = 0;
    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;
        for (i = 0; i < part->nelts; i++) {
            headers[n].name.ptr = h[i].key.data;
            headers[n].name.len = h[i].key.len;
            headers[n].value.ptr = h[i].value.data;
            headers[n].value.len = h[i].value.len;
            n++;
        }
    }

    req.method.ptr = r->method_name.data;
    req.method.len = r->method_name.len;
    req.uri.ptr = r->unparsed_uri.data;
    req.uri.len = r->unparsed_uri.len;
    req.headers = headers;
    req.headers_len = n;
    req.body.ptr = body;
    req.body.len = body_len;
    /* The peer as an IP address; a unix socket has none. */
    req.peer.ptr = NULL;
    req.peer.len = 0;
    if (r->connection->sockaddr->sa_family == AF_INET
#if (NGX_HAVE_INET6)
        || r->connection->sockaddr->sa_family == AF_INET6
#endif
       )
    {
        req.peer.ptr = r->connection->addr_text.data;
        req.peer.len = r->connection->addr_text.len;
    }
    req.identity.ptr = NULL;
    req.identity.len = 0;

    d = NULL;
    st = ew_inspect(ngx_http_edgeward_engine, ngx_http_edgeward_scratch, &req, &d);
    if (st != EW_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "edgeward: inspect failed: %s: %s",
                      ew_last_error_code(), ew_last_error());
        return ngx_http_edgeward_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                       "guard_error", "the request guard failed");
    }

    if (!ew_decision_allowed(d)) {
        ngx_int_t rc = ngx_http_edgeward_refuse(r, d);
        ew_decision_free(d);
        return rc;
    }

    ctx->decision = d;

    if (ew_decision_rewrite_count(d) > 0) {
        st = ew_decision_rewrite_body(ngx_http_edgeward_engine, d, body, body_len,
                                      &rewritten);
        if (st == EW_OK) {
            ngx_int_t rc = ngx_http_edgeward_set_body(r, rewritten.ptr, rewritten.len);
            ew_string_free(rewritten);
            if (rc != NGX_OK) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        } else if (st != EW_ERR_NOT_FOUND) {
            /* The body cannot carry the clamped parameters: never forward it as is,
             * and give back what it reserved. The code is copied first: settling may
             * fail and replace the thread's last error. */
            const char  *code = ew_last_error_code();
            u_char      *copy = ngx_pnalloc(r->pool, ngx_strlen(code) + 1);

            if (copy == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
            (void) ngx_cpystrn(copy, (u_char *) code, ngx_strlen(code) + 1);
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "edgeward: body not rewritten: %s: %s", code, ew_last_error());
            ngx_http_edgeward_settle_zero(ctx);
            return ngx_http_edgeward_error(r, NGX_HTTP_BAD_REQUEST, (const char *) copy,
                                           "the request body cannot be rewritten");
        }
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_edgeward_add_header(ngx_http_request_t *r, ew_str name, ew_str value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->key.data = ngx_pnalloc(r->pool, name.len + value.len + 1);
    if (h->key.data == NULL) {
        return NGX_ERROR;
    }
    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    h->key.len = name.len;
    ngx_memcpy(h->key.data, name.ptr, name.len);
    h->value.data = h->key.data + name.len;
    h->value.len = value.len;
    ngx_memcpy(h->value.data, value.ptr, value.len);
    h->lowcase_key = NULL;

    return NGX_OK;
}


/* Sends `body` with `status` and content type, the request's answer. */
static ngx_int_t
ngx_http_edgeward_send(ngx_http_request_t *r, ngx_uint_t status, const char *type,
    size_t type_len, const char *body, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_type.data = ngx_pnalloc(r->pool, type_len ? type_len : 1);
    if (r->headers_out.content_type.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_memcpy(r->headers_out.content_type.data, type, type_len);
    r->headers_out.content_type.len = type_len;
    r->headers_out.content_type_len = type_len;
    r->headers_out.content_length_n = (off_t) len;

    b = ngx_create_temp_buf(r->pool, len ? len : 1);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    b->last = ngx_cpymem(b->pos, body, len);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    out.buf = b;
    out.next = NULL;

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_edgeward_refuse(ngx_http_request_t *r, ew_decision *d)
{
    size_t     i, n;
    ew_str     name, value, body, type;
    ew_bytes   id;

    n = ew_decision_header_count(d);
    for (i = 0; i < n; i++) {
        if (ew_decision_header(d, i, &name, &value) == EW_OK
            && ngx_http_edgeward_add_header(r, name, value) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    id.ptr = NULL;
    id.len = 0;
    if (ew_decision_refusal(ngx_http_edgeward_engine, d, id, &body, &type) != EW_OK) {
        return ew_decision_status(d);
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "edgeward: refused %ui: %*s", (ngx_uint_t) ew_decision_status(d),
                  ew_decision_reason(d).len, ew_decision_reason(d).ptr);

    return ngx_http_edgeward_send(r, ew_decision_status(d), type.ptr, type.len,
                                  body.ptr, body.len);
}


/* An answer of the module's own (no decision): the same JSON error shape. */
static ngx_int_t
ngx_http_edgeward_error(ngx_http_request_t *r, ngx_uint_t status, const char *code,
    const char *message)
{
    u_char  *body, *last;
    size_t   len;

    len = sizeof("{\"error\":{\"message\":\"\",\"type\":\"invalid_request_error\","
                 "\"code\":\"\"}}")
          + ngx_strlen(message) + ngx_strlen(code);
    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    last = ngx_snprintf(body, len,
                        "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"code\":\"%s\"}}",
                        message,
                        status >= 500 ? "server_error" : "invalid_request_error", code);

    return ngx_http_edgeward_send(r, status, "application/json",
                                  sizeof("application/json") - 1, (char *) body,
                                  last - body);
}


/* Settles with the estimate: what was reserved stays charged (the response's usage is
 * unknown) and concurrency is released now instead of at the lease's end. */
static ew_status
ngx_http_edgeward_settle_estimate(ngx_http_edgeward_ctx_t *ctx)
{
    ew_cost   c;
    ew_usage  u;

    ngx_memzero(&u, sizeof(u));
    u.source = EW_USAGE_PARTIAL;
    if (ew_decision_cost(ctx->decision, &c) == EW_OK) {
        u.prompt_tokens = c.prompt_tokens;
        u.output_tokens = c.output_tokens_reserved;
    }

    return ew_settle_usage(ngx_http_edgeward_engine, ctx->decision, &u, NULL);
}


/* Settles with zero usage: the model was never reached, the reservation is refunded. */
static void
ngx_http_edgeward_settle_zero(ngx_http_edgeward_ctx_t *ctx)
{
    ew_usage  zero;

    ngx_memzero(&zero, sizeof(zero));
    zero.source = EW_USAGE_REPORTED;
    (void) ew_settle_usage(ngx_http_edgeward_engine, ctx->decision, &zero, NULL);
    ctx->settled = 1;
}


/* Settles the reservation once, with what the response showed; when it showed nothing
 * readable, with the estimate. */
static void
ngx_http_edgeward_settle(ngx_http_edgeward_ctx_t *ctx)
{
    ew_usage    u;
    ew_status   st;
    ngx_log_t  *log;

    if (ctx->settled || ctx->decision == NULL) {
        return;
    }
    ctx->settled = 1;
    log = ctx->request->connection->log;

    st = EW_ERR_NOT_FOUND;
    if (ctx->tracker) {
        st = ew_usage_tracker_finish(ctx->tracker, &u);
        if (st == EW_OK) {
            st = ew_settle_usage(ngx_http_edgeward_engine, ctx->decision, &u, NULL);
        }
    } else if (ctx->json && !ctx->too_big && ctx->resp_len > 0) {
        st = ew_settle_body(ngx_http_edgeward_engine, ctx->decision, ctx->resp,
                            ctx->resp_len, NULL);
    }

    if (st != EW_OK) {
        if (st != EW_ERR_NOT_FOUND) {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "edgeward: no usage in the response (%s: %s); settled with "
                          "the estimate", ew_last_error_code(), ew_last_error());
        }
        (void) ngx_http_edgeward_settle_estimate(ctx);
    }
}


static void
ngx_http_edgeward_cleanup(void *data)
{
    ngx_http_edgeward_ctx_t  *ctx = data;
    ngx_http_request_t       *r = ctx->request;

    if (ctx->decision && !ctx->settled && ngx_http_edgeward_engine) {
        if (r->upstream == NULL || r->upstream->state == NULL
            || r->upstream->state->status == 0
            || r->upstream->state->status >= NGX_HTTP_INTERNAL_SERVER_ERROR)
        {
            /* No answer from the model server: refunded. */
            ngx_http_edgeward_settle_zero(ctx);
        } else {
            /* Answered, but not to the end (an aborted stream, a body never seen):
             * what was seen, else the estimate. */
            ngx_http_edgeward_settle(ctx);
        }
    }

    ew_usage_tracker_free(ctx->tracker);
    ctx->tracker = NULL;
    ew_decision_free(ctx->decision);
    ctx->decision = NULL;
}


static ngx_int_t
ngx_http_edgeward_header_filter(ngx_http_request_t *r)
{
    size_t                    i, n;
    ew_str                    name, value;
    ngx_str_t                *type;
    ngx_http_edgeward_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_edgeward_get_ctx(r);
    if (ctx == NULL || ctx->decision == NULL || ctx->settled) {
        return ngx_http_next_header_filter(r);
    }

    /* The RateLimit headers of the most constrained limit. */
    n = ew_decision_header_count(ctx->decision);
    for (i = 0; i < n; i++) {
        if (ew_decision_header(ctx->decision, i, &name, &value) == EW_OK) {
            (void) ngx_http_edgeward_add_header(r, name, value);
        }
    }

    if (r->headers_out.status >= NGX_HTTP_SPECIAL_RESPONSE) {
        return ngx_http_next_header_filter(r);
    }

    if (r->headers_out.content_encoding && r->headers_out.content_encoding->value.len
        && ngx_strncasecmp(r->headers_out.content_encoding->value.data,
                           (u_char *) "identity", sizeof("identity") - 1) != 0)
    {
        /* A compressed answer's usage cannot be read: settled with the estimate. */
        return ngx_http_next_header_filter(r);
    }

    /* File buffers (proxy_buffering to temporary files, sendfile) are read into memory
     * on their way here, so every byte of the answer is seen. */
    r->filter_need_in_memory = 1;

    type = &r->headers_out.content_type;
    if (ctx->tracker == NULL && type->len >= sizeof("text/event-stream") - 1
        && ngx_strncasecmp(type->data, (u_char *) "text/event-stream",
                           sizeof("text/event-stream") - 1) == 0)
    {
        if (ew_usage_tracker_new(ngx_http_edgeward_engine, ctx->decision, &ctx->tracker)
            != EW_OK)
        {
            ctx->tracker = NULL;
        }
    } else {
        ctx->json = 1;
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_edgeward_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    size_t                    size, cap;
    u_char                   *p;
    ngx_chain_t              *cl;
    ngx_http_edgeward_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_body_filter(r, in);
    }

    ctx = ngx_http_edgeward_get_ctx(r);
    if (ctx == NULL || ctx->decision == NULL || ctx->settled
        || (ctx->tracker == NULL && !ctx->json))
    {
        return ngx_http_next_body_filter(r, in);
    }

    for (cl = in; cl; cl = cl->next) {
        if (ngx_buf_in_memory(cl->buf) && cl->buf->last > cl->buf->pos) {
            size = cl->buf->last - cl->buf->pos;

            if (ctx->tracker) {
                /* Streams pass through; the tracker keeps only what it needs. */
                (void) ew_usage_tracker_feed(ctx->tracker, cl->buf->pos, size);

            } else if (!ctx->too_big) {
                if (ctx->resp_len + size > EDGEWARD_MAX_RESPONSE) {
                    ctx->too_big = 1;
                } else {
                    if (ctx->resp_len + size > ctx->resp_cap) {
                        cap = ngx_max(ctx->resp_cap * 2, ctx->resp_len + size);
                        cap = ngx_max(cap, 4096);
                        p = ngx_pnalloc(r->pool, cap);
                        if (p == NULL) {
                            return NGX_ERROR;
                        }
                        if (ctx->resp_len) {
                            ngx_memcpy(p, ctx->resp, ctx->resp_len);
                        }
                        ctx->resp = p;
                        ctx->resp_cap = cap;
                    }
                    ngx_memcpy(ctx->resp + ctx->resp_len, cl->buf->pos, size);
                    ctx->resp_len += size;
                }
            }
        }

        if (cl->buf->last_buf) {
            ngx_http_edgeward_settle(ctx);
        }
    }

    return ngx_http_next_body_filter(r, in);
}


/* Why a policy did not compile. A Redis store is refused by the C ABI itself
 * (EW_ENGINE_NO_BLOCKING_STORE, code ffi.blocking_store) before any connection is made:
 * every store call would be a blocking round trip in the worker's event loop, stalling
 * every connection on it, so limits are counted in each worker's memory. */
static void
ngx_http_edgeward_policy_error(ngx_conf_t *cf, ngx_str_t *policy)
{
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "edgeward: policy \"%V\": %s: %s",
                       policy, ew_last_error_code(), ew_last_error());
}


static char *
ngx_http_edgeward_policy(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_edgeward_main_conf_t  *mcf = conf;
    ngx_str_t                      *value;
    ngx_pool_cleanup_t             *cln;
    u_char                         *path;

    if (mcf->policy.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    mcf->policy = value[1];

    if (ngx_conf_full_name(cf->cycle, &mcf->policy, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    path = ngx_pnalloc(cf->pool, mcf->policy.len + 1);
    if (path == NULL) {
        return NGX_CONF_ERROR;
    }
    (void) ngx_cpystrn(path, mcf->policy.data, mcf->policy.len + 1);
    mcf->policy.data = path;

    /* `nginx -s reload|quit|stop` reads the configuration only to find the pid file: a
     * policy broken on disk must not keep it from signalling. */
    if (ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_CONF_OK;
    }

    /* Compiled here, once per configuration, and never read again: `nginx -t` checks
     * exactly what is compiled, every worker (also one respawned later) forks with this
     * engine, and an edit of the file on disk takes effect on reload or not at all,
     * never in some workers only. A reload that fails to compile keeps the old cycle,
     * hence the old engine, serving. */
    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    if (ew_engine_from_policy_file_with((const char *) path, EW_ENGINE_NO_BLOCKING_STORE,
                                        &mcf->engine)
        != EW_OK)
    {
        mcf->engine = NULL;
        ngx_http_edgeward_policy_error(cf, &mcf->policy);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_edgeward_free_engine;
    cln->data = mcf->engine;

    return NGX_CONF_OK;
}


/* The configuration's reference, dropped with its cycle (after a reload, on exit). */
static void
ngx_http_edgeward_free_engine(void *data)
{
    ew_engine_free(data);
}


static ngx_int_t
ngx_http_edgeward_init_process(ngx_cycle_t *cycle)
{
    ngx_http_edgeward_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_edgeward_module);
    if (mcf == NULL || mcf->engine == NULL) {
        return NGX_OK;
    }

    /* The worker's own reference: the engine stays while its requests are cleaned up,
     * whatever order the cycle's pool goes in at exit. Limits and budgets are counted in
     * this process's copy of the engine (the master never inspects). */
    ngx_http_edgeward_engine = ew_engine_clone(mcf->engine);

    if (ew_scratch_new(ngx_http_edgeward_engine, &ngx_http_edgeward_scratch) != EW_OK) {
        ngx_http_edgeward_scratch = NULL; /* ew_inspect uses its pool */
    }

    return NGX_OK;
}


static void
ngx_http_edgeward_exit_process(ngx_cycle_t *cycle)
{
    (void) cycle;
    ew_scratch_free(ngx_http_edgeward_scratch);
    ngx_http_edgeward_scratch = NULL;
    ew_engine_free(ngx_http_edgeward_engine);
    ngx_http_edgeward_engine = NULL;
}


static void *
ngx_http_edgeward_create_main_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_edgeward_main_conf_t));
}


static void *
ngx_http_edgeward_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_edgeward_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_edgeward_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->enable = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_edgeward_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_edgeward_loc_conf_t *prev = parent;
    ngx_http_edgeward_loc_conf_t *conf = child;

    (void) cf;
    ngx_conf_merge_value(conf->enable, prev->enable, 0);

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_edgeward_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /* The precontent phase, not the access phase: a dynamic module's access handler
     * runs before the static ones (allow/deny, auth_basic, auth_request), so a request
     * nginx later refused with 401/403 had already been inspected and charged. Here
     * every access check, under `satisfy all` or `satisfy any`, has let the request in.
     * Handlers pushed last run first, so this one also runs before try_files and
     * mirror: a refused request is never mirrored, a mirrored one carries the clamped
     * body, and the context found again after try_files' internal redirect keeps it
     * from being inspected twice. */
    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    *h = ngx_http_edgeward_handler;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_edgeward_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_edgeward_body_filter;

    return NGX_OK;
}
