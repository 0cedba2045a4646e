//! `GET /openapi.json`: an OpenAPI 3 document of exactly what this plugin serves. The
//! integration tests check real responses against its schemas.

use serde_json::{json, Value};

fn int() -> Value {
    json!({"type": "integer"})
}
fn string() -> Value {
    json!({"type": "string"})
}
fn nstring() -> Value {
    json!({"type": "string", "nullable": true})
}
fn boolean() -> Value {
    json!({"type": "boolean"})
}
fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
}

fn path_clientid() -> Value {
    json!({"name": "clientid", "in": "path", "required": true, "schema": string()})
}

fn body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn ok(status: &str, description: &str, schema: Option<Value>) -> (String, Value) {
    let v = match schema {
        Some(s) => {
            json!({"description": description, "content": {"application/json": {"schema": s}}})
        }
        None => json!({"description": description}),
    };
    (status.to_string(), v)
}

fn errors(codes: &[&str]) -> Vec<(String, Value)> {
    codes
        .iter()
        .map(|c| {
            let d = match *c {
                "400" => "INVALID_PARAMETER",
                "401" => "BAD_USERNAME_OR_PWD",
                "403" => "FORBIDDEN: the API key lacks the right",
                _ => "CLIENTID_NOT_FOUND",
            };
            ok(c, d, Some(reference("Error")))
        })
        .collect()
}

fn op(summary: &str, params: Vec<Value>, req: Option<Value>, resp: Vec<(String, Value)>) -> Value {
    let mut o = json!({
        "summary": summary,
        "parameters": params,
        "responses": resp.into_iter().collect::<serde_json::Map<_, _>>(),
    });
    if let Some(b) = req {
        o["requestBody"] = b;
    }
    o
}

fn paging() -> Vec<Value> {
    vec![
        query("page", int(), "Page number, from 1 (also `_page`)"),
        query(
            "limit",
            int(),
            "Items per page, 1 to 10000, default 100 (also `_limit`)",
        ),
        query("_page", int(), "Same as page"),
        query("_limit", int(), "Same as limit"),
    ]
}

/// The names of a client's fields, as the schema lists them (for `fields=`).
pub fn client_fields() -> Vec<String> {
    client_schema()["properties"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn client_schema() -> Value {
    let mut props = serde_json::Map::new();
    for k in [
        "node",
        "clientid",
        "proto_name",
        "created_at",
        "zone",
        "listener",
    ] {
        props.insert(k.into(), string());
    }
    for k in ["username", "ip_address", "connected_at", "disconnected_at"] {
        props.insert(k.into(), nstring());
    }
    for k in [
        "is_bridge",
        "connected",
        "clean_start",
        "is_persistent",
        "enable_authn",
    ] {
        props.insert(k.into(), boolean());
    }
    for k in [
        "proto_ver",
        "keepalive",
        "expiry_interval",
        "subscriptions_cnt",
        "inflight_cnt",
        "inflight",
        "inflight_max",
        "max_inflight",
        "mqueue_len",
        "mqueue_max",
        "max_mqueue",
        "mqueue_dropped",
        "awaiting_rel_cnt",
        "awaiting_rel",
        "awaiting_rel_max",
        "max_awaiting_rel",
        "recv_oct",
        "recv_cnt",
        "recv_pkt",
        "recv_msg",
        "send_oct",
        "send_cnt",
        "send_pkt",
        "send_msg",
        "send_msg.dropped",
        "send_msg.dropped.queue_full",
        "mailbox_len",
        "heap_size",
        "reductions",
    ] {
        props.insert(k.into(), int());
    }
    props.insert("port".into(), json!({"type": "integer", "nullable": true}));
    let limit = json!({"oneOf": [int(), {"type": "string", "enum": ["infinity"]}]});
    props.insert("subscriptions_max".into(), limit.clone());
    props.insert("max_subscriptions".into(), limit);
    let required: Vec<&String> = props.keys().filter(|k| *k != "disconnected_at").collect();
    json!({"type": "object", "required": required, "properties": props})
}

/// `{meta, data}` of a listing paged by cursor or position (`meta` always has `limit`
/// and `hasnext`).
fn cursor_page(meta_props: Value, item: Value) -> Value {
    json!({
        "type": "object",
        "required": ["meta", "data"],
        "properties": {
            "meta": {"type": "object", "required": ["limit", "hasnext"], "properties": meta_props},
            "data": {"type": "array", "items": item},
        },
    })
}

fn page_of(item: &str) -> Value {
    json!({
        "type": "object",
        "required": ["meta", "data"],
        "properties": {
            "meta": {
                "type": "object",
                "required": ["page", "limit", "count", "hasnext"],
                "properties": {"page": int(), "limit": int(), "count": int(), "hasnext": boolean()},
            },
            "data": {"type": "array", "items": reference(item)},
        },
    })
}

/// The document.
pub fn document() -> Value {
    let client_filters = vec![
        query(
            "clientid",
            string(),
            "Exact client id (repeat it: any of them)",
        ),
        query(
            "username",
            string(),
            "Exact username (repeat it: any of them)",
        ),
        query(
            "fields",
            string(),
            "Comma-separated fields to return (default: all)",
        ),
        query("zone", string(), "Zone (Apiary has one: default)"),
        query("ip_address", string(), "Client IP address"),
        query(
            "conn_state",
            json!({"type": "string", "enum": ["connected", "idle", "disconnected"]}),
            "Connection state",
        ),
        query("clean_start", boolean(), "Clean start flag"),
        query(
            "proto_name",
            json!({"type": "string", "enum": ["MQTT", "MQIsdp", "CoAP", "MQTT-SN", "websocket", "socketio"]}),
            "Protocol name",
        ),
        query("proto_ver", int(), "Protocol version"),
        query("like_clientid", string(), "Substring of the client id"),
        query("like_username", string(), "Substring of the username"),
        query(
            "gte_created_at",
            string(),
            "Created at or after: epoch seconds or RFC 3339 (also _gte_created_at)",
        ),
        query(
            "lte_created_at",
            string(),
            "Created at or before (also _lte_created_at)",
        ),
        query(
            "gte_connected_at",
            string(),
            "Connected at or after (also _gte_connected_at)",
        ),
        query(
            "lte_connected_at",
            string(),
            "Connected at or before (also _lte_connected_at)",
        ),
    ];
    let mut v2_params = vec![
        query("limit", int(), "Clients per page, 1 to 10000 (default 100)"),
        query(
            "cursor",
            string(),
            "meta.cursor of the previous page (absent: the first)",
        ),
    ];
    v2_params.extend(client_filters.iter().cloned());
    let msg_params = vec![
        path_clientid(),
        query(
            "limit",
            int(),
            "Messages per page, 1 to 10000 (default 100)",
        ),
        query(
            "position",
            string(),
            "meta.position of the previous page (absent: the oldest)",
        ),
        query("payload", string(), "base64 (default), plain or none"),
    ];
    let mut list_params = paging();
    list_params.extend(client_filters);
    let mut sub_params = paging();
    sub_params.extend([
        query("clientid", string(), "Exact client id"),
        query("topic", string(), "Exact filter as subscribed"),
        query("qos", int(), "Granted QoS"),
        query(
            "share_group",
            string(),
            "Shared subscriptions of this group",
        ),
        query(
            "match_topic",
            string(),
            "Filters that match this topic name",
        ),
    ]);
    let with = |mut v: Vec<(String, Value)>, codes: &[&str]| {
        v.extend(errors(codes));
        v
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Apiary EMQX clients API",
            "version": "5",
            "description": "EMQX's clients API over Apiary's session registry. HTTP basic auth: an Apiary API key and its secret.",
        },
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"], "properties": {"code": string(), "message": string()}},
                "Client": client_schema(),
                "Clients": page_of("Client"),
                "Messages": cursor_page(
                    json!({"limit": int(), "hasnext": boolean(), "count": int(), "start": string(), "position": string()}),
                    json!({
                            "type": "object",
                            "required": ["msgid", "topic", "qos", "publish_at"],
                            "properties": {
                                "msgid": string(), "topic": string(), "qos": int(), "retain": boolean(),
                                "publish_at": int(), "from_clientid": {"type": "string", "nullable": true},
                                "inserted_at": string(), "mqueue_priority": int(), "packet_id": int(),
                                "payload": string(),
                            },
                    }),
                ),
                "ClientsV2": cursor_page(
                    json!({"limit": int(), "hasnext": boolean(), "cursor": string()}),
                    reference("Client"),
                ),
                "Subscription": {
                    "type": "object",
                    "required": ["clientid", "topic", "qos", "node", "nl", "rap", "rh"],
                    "properties": {"clientid": string(), "topic": string(), "qos": int(), "node": string(), "nl": int(), "rap": int(), "rh": int()},
                },
                "Subscriptions": page_of("Subscription"),
                "SubscribeRequest": {
                    "type": "object",
                    "required": ["topic"],
                    "properties": {"topic": string(), "qos": int(), "nl": int(), "rap": int(), "rh": int()},
                },
                "TopicRequest": {"type": "object", "required": ["topic"], "properties": {"topic": string()}},
                "PublishRequest": {
                    "type": "object",
                    "required": ["topic"],
                    "properties": {
                        "topic": string(), "payload": string(), "qos": int(), "retain": boolean(),
                        "payload_encoding": {"type": "string", "enum": ["plain", "base64"]},
                        "clientid": string(), "properties": {"type": "object"},
                    },
                },
                "PublishResult": {
                    "type": "object",
                    "properties": {"id": string(), "reason_code": int(), "message": string()},
                },
            },
        },
        "security": [{"basic": []}],
        "paths": {
            "/clients": {"get": op("List clients", list_params, None,
                with(vec![ok("200", "A page of clients", Some(reference("Clients")))], &["400", "401", "403"]))},
            "/clients_v2": {"get": op("List clients by cursor: stable while clients come and go", v2_params, None,
                with(vec![ok("200", "A page of clients; meta.cursor when more follow", Some(reference("ClientsV2")))], &["400", "401", "403"]))},
            "/clients/{clientid}": {
                "get": op("One client", vec![path_clientid()], None,
                    with(vec![ok("200", "The client", Some(reference("Client")))], &["401", "403", "404"])),
                "delete": op("Kick: the connection and the session end", vec![path_clientid()], None,
                    with(vec![ok("204", "Kicked", None)], &["401", "403", "404"])),
            },
            "/clients/kickout/bulk": {"post": op("Kick several clients", vec![],
                Some(body(json!({"type": "array", "items": string()}))),
                with(vec![ok("204", "Kicked", None)], &["400", "401", "403"]))},
            "/clients/{clientid}/mqueue_messages": {"get": op("A client's queued messages, oldest first", msg_params.clone(), None,
                with(vec![ok("200", "A page; meta.position when more follow", Some(reference("Messages")))], &["400", "401", "403", "404"]))},
            "/clients/{clientid}/inflight_messages": {"get": op("A client's messages sent and not yet acknowledged", msg_params, None,
                with(vec![ok("200", "A page; meta.position when more follow", Some(reference("Messages")))], &["400", "401", "403", "404"]))},
            "/clients/{clientid}/subscriptions": {"get": op("A client's subscriptions", vec![path_clientid()], None,
                with(vec![ok("200", "Subscriptions", Some(json!({"type": "array", "items": reference("Subscription")})))], &["401", "403", "404"]))},
            "/clients/{clientid}/subscribe": {"post": op("Subscribe on the client's behalf (online or offline persistent)",
                vec![path_clientid()], Some(body(reference("SubscribeRequest"))),
                with(vec![ok("200", "The subscription", Some(reference("Subscription")))], &["400", "401", "403", "404"]))},
            "/clients/{clientid}/subscribe/bulk": {"post": op("Subscribe to several filters",
                vec![path_clientid()], Some(body(json!({"type": "array", "items": reference("SubscribeRequest")}))),
                with(vec![ok("200", "The subscriptions", Some(json!({"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": reference("Subscription")}}})))], &["400", "401", "403", "404"]))},
            "/clients/{clientid}/unsubscribe": {"post": op("Unsubscribe", vec![path_clientid()],
                Some(body(reference("TopicRequest"))),
                with(vec![ok("204", "Unsubscribed", None)], &["400", "401", "403", "404"]))},
            "/clients/{clientid}/unsubscribe/bulk": {"post": op("Unsubscribe from several filters", vec![path_clientid()],
                Some(body(json!({"type": "array", "items": reference("TopicRequest")}))),
                with(vec![ok("204", "Unsubscribed", None)], &["400", "401", "403", "404"]))},
            "/subscriptions": {"get": op("List subscriptions", sub_params, None,
                with(vec![ok("200", "A page of subscriptions", Some(reference("Subscriptions")))], &["400", "401", "403"]))},
            "/publish": {"post": op("Publish a message", vec![], Some(body(reference("PublishRequest"))),
                with(vec![
                    ok("200", "Delivered to at least one subscriber", Some(reference("PublishResult"))),
                    ok("202", "No matching subscribers", Some(reference("PublishResult"))),
                ], &["400", "401", "403"]))},
            "/publish/bulk": {"post": op("Publish several messages", vec![],
                Some(body(json!({"type": "array", "items": reference("PublishRequest")}))),
                with(vec![
                    ok("200", "At least one was delivered", Some(json!({"type": "array", "items": reference("PublishResult")}))),
                    ok("202", "None matched a subscriber", Some(json!({"type": "array", "items": reference("PublishResult")}))),
                ], &["400", "401", "403"]))},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3"}}}},
        },
    })
}
