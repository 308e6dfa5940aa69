##! Adds the original TLS facts of synthetic connections to conn.log and
##! http.log: the original server port, TLS version, cipher suite, SNI and
##! key origin, in ``tls_bridge_*`` columns that stay empty for connections
##! that did not come through the bridge.
##!
##! A log record gets the facts that are known when it is written: a
##! connection's conn.log line is written when it ends, an http.log line when
##! its reply is complete.  Facts that arrive later are in tls_bridge.log only.

@load base/protocols/conn
@load base/protocols/http
@load ./main

module TLSBridge;

redef record Conn::Info += {
	## The bridge's connection number of the original TLS connection.
	tls_bridge_flow_id: count &log &optional;
	## Server port of the original TLS connection.
	tls_bridge_resp_p: port &log &optional;
	## TLS version of the original connection.
	tls_bridge_version: string &log &optional;
	## Cipher suite of the original connection.
	tls_bridge_cipher: string &log &optional;
	## Server name indication of the original connection.
	tls_bridge_sni: string &log &optional;
	## Where the session secrets came from (see :zeek:see:`TLSBridge::Facts`).
	tls_bridge_origin: string &log &optional;
};

redef record HTTP::Info += {
	## The bridge's connection number of the original TLS connection.
	tls_bridge_flow_id: count &log &optional;
	## Server port of the original TLS connection.
	tls_bridge_resp_p: port &log &optional;
	## TLS version of the original connection.
	tls_bridge_version: string &log &optional;
	## Cipher suite of the original connection.
	tls_bridge_cipher: string &log &optional;
	## Server name indication of the original connection.
	tls_bridge_sni: string &log &optional;
	## Where the session secrets came from (see :zeek:see:`TLSBridge::Facts`).
	tls_bridge_origin: string &log &optional;
};

function annotate_conn(rec: Conn::Info, facts: Facts)
	{
	if ( facts?$flow_id )
		rec$tls_bridge_flow_id = facts$flow_id;
	if ( facts?$resp_p )
		rec$tls_bridge_resp_p = facts$resp_p;
	if ( facts?$version )
		rec$tls_bridge_version = facts$version;
	if ( facts?$cipher )
		rec$tls_bridge_cipher = facts$cipher;
	if ( facts?$sni )
		rec$tls_bridge_sni = facts$sni;
	if ( facts?$origin && facts$origin != "" )
		rec$tls_bridge_origin = facts$origin;
	}

function annotate_http(rec: HTTP::Info, facts: Facts)
	{
	if ( facts?$flow_id )
		rec$tls_bridge_flow_id = facts$flow_id;
	if ( facts?$resp_p )
		rec$tls_bridge_resp_p = facts$resp_p;
	if ( facts?$version )
		rec$tls_bridge_version = facts$version;
	if ( facts?$cipher )
		rec$tls_bridge_cipher = facts$cipher;
	if ( facts?$sni )
		rec$tls_bridge_sni = facts$sni;
	if ( facts?$origin && facts$origin != "" )
		rec$tls_bridge_origin = facts$origin;
	}

# Copies the facts into the records that are still to be logged.  (No early
# exit: "break" would end the other handlers of the hook too.)
hook TLSBridge::annotate(c: connection)
	{
	if ( c?$tls_bridge && c?$conn )
		annotate_conn(c$conn, c$tls_bridge);

	if ( c?$tls_bridge && c?$http )
		annotate_http(c$http, c$tls_bridge);

	if ( c?$tls_bridge && c?$http_state )
		{
		for ( depth, rec in c$http_state$pending )
			annotate_http(rec, c$tls_bridge);
		}
	}

# Conn::Info may be created late (older Zeek: when the connection ends, at
# priority 5); it is written at priority -5.
event connection_state_remove(c: connection) &priority=0
	{
	if ( c?$tls_bridge && c?$conn )
		annotate_conn(c$conn, c$tls_bridge);
	}

# HTTP::Info records are created per request at priority 5.
event http_request(c: connection, method: string, original_URI: string,
    unescaped_URI: string, version: string) &priority=3
	{
	if ( c?$tls_bridge && c?$http )
		annotate_http(c$http, c$tls_bridge);
	}

event http_reply(c: connection, version: string, code: count, reason: string)
    &priority=3
	{
	if ( c?$tls_bridge && c?$http )
		annotate_http(c$http, c$tls_bridge);
	}
