# @TEST-DOC: Without a flow log the marker MAC of the synthetic frames alone makes the connections bridge connections: the same notices, no annotations, no tls_bridge.log.
#
# @TEST-EXEC: zeek -b -r $TRACES/tls-bridge-http.pcap $PACKAGE %INPUT
# @TEST-EXEC: zeek-cut note msg sub <notice.log >notice.cut
# @TEST-EXEC: btest-diff notice.cut
# @TEST-EXEC: zeek-cut id.orig_p id.resp_p tls_bridge_flow_id tls_bridge_version <conn.log | sort >conn.cut
# @TEST-EXEC: btest-diff conn.cut
# @TEST-EXEC: test ! -e tls_bridge.log

event zeek_init()
	{
	Analyzer::register_for_ports(Analyzer::ANALYZER_HTTP, set(8443/tcp, 8444/tcp));
	}
