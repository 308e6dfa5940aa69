# @TEST-DOC: Offline: the flow log is read before the first packet, so every synthetic connection is annotated from its start; Basic auth, a credential in a URI and two executables raise notices.
#
# @TEST-EXEC: cp $TRACES/tls-bridge-http.flows.jsonl flows.jsonl
# @TEST-EXEC: zeek -b -r $TRACES/tls-bridge-http.pcap $PACKAGE %INPUT >output
# @TEST-EXEC: btest-diff output
#
# @TEST-EXEC: zeek-cut flow_id orig_h orig_p resp_h resp_p synthetic_resp_p status reason version cipher sni alpn resumed origin_host origin_vm origin_pid origin_comm origin_trigger c2s_bytes s2c_bytes <tls_bridge.log >tls_bridge.cut
# @TEST-EXEC: btest-diff tls_bridge.cut
#
# @TEST-EXEC: zeek-cut id.orig_p id.resp_p conn_state tls_bridge_flow_id tls_bridge_resp_p tls_bridge_version tls_bridge_cipher tls_bridge_sni tls_bridge_origin <conn.log | sort >conn.cut
# @TEST-EXEC: btest-diff conn.cut
#
# @TEST-EXEC: zeek-cut id.orig_p id.resp_p method host uri status_code username tls_bridge_flow_id tls_bridge_version tls_bridge_sni tls_bridge_origin <http.log >http.cut
# @TEST-EXEC: btest-diff http.cut
#
# @TEST-EXEC: zeek-cut note msg sub <notice.log >notice.cut
# @TEST-EXEC: btest-diff notice.cut
#
# Every tls_bridge.log line carries the uid of its synthetic connection.
# @TEST-EXEC: zeek-cut uid id.orig_p id.resp_p <conn.log | sort >conn.uids
# @TEST-EXEC: zeek-cut uid orig_p synthetic_resp_p <tls_bridge.log | sort >tls_bridge.uids
# @TEST-EXEC: diff conn.uids tls_bridge.uids

redef TLSBridge::flow_log = "flows.jsonl";

event zeek_init()
	{
	# The trace's servers listen on 8443 and 8444.
	Analyzer::register_for_ports(Analyzer::ANALYZER_HTTP, set(8443/tcp, 8444/tcp));
	}

event TLSBridge::bridged_connection(c: connection, facts: TLSBridge::Facts)
	{
	print fmt("%s:%d -> %s:%d is flow %d: %s %s, SNI %s", c$id$orig_h,
	    port_to_count(c$id$orig_p), c$id$resp_h, port_to_count(c$id$resp_p),
	    facts$flow_id, facts$version, facts$cipher, facts$sni);
	}
