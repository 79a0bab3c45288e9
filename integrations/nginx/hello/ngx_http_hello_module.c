/*
 * hello: a minimal access-phase module used to prove the build recipe for
 * dynamic modules against Debian's nginx-dev (nginx 1.22).
 *
 *   hello on|off;               enable the access-phase check (location)
 *   hello_block_body STRING;    read the request body first and answer 403
 *                               when it contains STRING (location)
 *
 * A request with header "x-block: 1" is refused with 403.  Any other request
 * gets the response header "X-Hello: passed" and goes on (e.g. to proxy_pass;
 * the body read here is still forwarded upstream).
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


typedef struct {
    ngx_flag_t  enable;
    ngx_str_t   block_body;
} ngx_http_hello_loc_conf_t;


typedef struct {
    ngx_int_t   status;      /* verdict once the body has been read */
} ngx_http_hello_ctx_t;


static ngx_int_t ngx_http_hello_handler(ngx_http_request_t *r);
static void ngx_http_hello_body_ready(ngx_http_request_t *r);
static ngx_int_t ngx_http_hello_verdict(ngx_http_request_t *r);
static ngx_int_t ngx_http_hello_body_contains(ngx_http_request_t *r,
    ngx_str_t *needle);
static ngx_int_t ngx_http_hello_add_header(ngx_http_request_t *r);
static void *ngx_http_hello_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_hello_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_hello_init(ngx_conf_t *cf);


static ngx_command_t  ngx_http_hello_commands[] = {

    { ngx_string("hello"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_hello_loc_conf_t, enable),
      NULL },

    { ngx_string("hello_block_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_hello_loc_conf_t, block_body),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_hello_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_hello_init,                   /* postconfiguration */
    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */
    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */
    ngx_http_hello_create_loc_conf,        /* create location configuration */
    ngx_http_hello_merge_loc_conf          /* merge location configuration */
};


ngx_module_t  ngx_http_hello_module = {
    NGX_MODULE_V1,
    &ngx_http_hello_module_ctx,            /* module context */
    ngx_http_hello_commands,               /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_hello_handler(ngx_http_request_t *r)
{
    ngx_int_t                   rc;
    ngx_http_hello_ctx_t       *ctx;
    ngx_http_hello_loc_conf_t  *hlcf;

    hlcf = ngx_http_get_module_loc_conf(r, ngx_http_hello_module);

    if (!hlcf->enable) {
        return NGX_DECLINED;
    }

    if (hlcf->block_body.len == 0) {
        return ngx_http_hello_verdict(r);
    }

    /* second call, after the body handler re-ran the phases */
    ctx = ngx_http_get_module_ctx(r, ngx_http_hello_module);
    if (ctx != NULL) {
        return ctx->status;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_hello_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->status = NGX_DONE;
    ngx_http_set_ctx(r, ctx, ngx_http_hello_module);

    /*
     * Reading the body takes a reference on the request (r->main->count++);
     * the body handler runs either right now (whole body already here) or
     * later from the event loop.  Either way we drop our reference with
     * ngx_http_finalize_request(r, NGX_DONE) and stop the phase engine with
     * NGX_DONE; the body handler restarts it.
     */
    rc = ngx_http_read_client_request_body(r, ngx_http_hello_body_ready);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    ngx_http_finalize_request(r, NGX_DONE);
    return NGX_DONE;
}


static void
ngx_http_hello_body_ready(ngx_http_request_t *r)
{
    ngx_http_hello_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_hello_module);

    ctx->status = ngx_http_hello_verdict(r);

    /* keep the body for proxy_pass and run the phases again from here */
    r->preserve_body = 1;
    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


static ngx_int_t
ngx_http_hello_verdict(ngx_http_request_t *r)
{
    ngx_list_part_t            *part;
    ngx_table_elt_t            *h;
    ngx_uint_t                  i;
    ngx_http_hello_loc_conf_t  *hlcf;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }
            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("x-block") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "x-block",
                               sizeof("x-block") - 1) == 0
            && h[i].value.len == 1 && h[i].value.data[0] == '1')
        {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "hello: refused by x-block header");
            return NGX_HTTP_FORBIDDEN;
        }
    }

    hlcf = ngx_http_get_module_loc_conf(r, ngx_http_hello_module);

    if (hlcf->block_body.len
        && ngx_http_hello_body_contains(r, &hlcf->block_body) == NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "hello: refused by body marker");
        return NGX_HTTP_FORBIDDEN;
    }

    if (ngx_http_hello_add_header(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* NGX_DECLINED: let the other access handlers (allow/deny, auth) decide */
    return NGX_DECLINED;
}


/*
 * Looks for needle in the in-memory part of the request body.  A body (or
 * part of one) spooled to a temp file is not searched: configure
 * client_body_buffer_size >= client_max_body_size to keep it in memory.
 * Buffers are searched one at a time, so a needle split across two buffers
 * is missed; client_body_in_single_buffer on avoids that.
 */
static ngx_int_t
ngx_http_hello_body_contains(ngx_http_request_t *r, ngx_str_t *needle)
{
    size_t        len;
    u_char       *p;
    ngx_chain_t  *cl;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_DECLINED;
    }

    for (cl = r->request_body->bufs; cl; cl = cl->next) {

        if (!ngx_buf_in_memory(cl->buf)) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "hello: request body in a temp file, not searched");
            continue;
        }

        len = cl->buf->last - cl->buf->pos;
        if (len < needle->len) {
            continue;
        }

        /* the last argument is the needle's length minus one */
        p = ngx_strlcasestrn(cl->buf->pos, cl->buf->last, needle->data,
                             needle->len - 1);
        if (p != NULL) {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_hello_add_header(ngx_http_request_t *r)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    ngx_str_set(&h->key, "X-Hello");
    ngx_str_set(&h->value, "passed");

    return NGX_OK;
}


static void *
ngx_http_hello_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_hello_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_hello_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /* block_body is zeroed by ngx_pcalloc: { 0, NULL } means unset */
    conf->enable = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_hello_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_hello_loc_conf_t *prev = parent;
    ngx_http_hello_loc_conf_t *conf = child;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_str_value(conf->block_body, prev->block_body, "");

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_hello_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_hello_handler;

    return NGX_OK;
}
