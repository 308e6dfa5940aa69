# @TEST-DOC: Connections that are not bridge connections (other MACs, no flow record) raise no notices -- unless only_bridge_connections is turned off.
#
# @TEST-EXEC: zeek -b -r $TRACES/tls-bridge-http.pcap $PACKAGE %INPUT
# @TEST-EXEC: test ! -e notice.log
# @TEST-EXEC: test -s http.log
# @TEST-EXEC: zeek -b -r $TRACES/tls-bridge-http.pcap $PACKAGE %INPUT TLSBridge::only_bridge_connections=F
# @TEST-EXEC: zeek-cut note <notice.log >notice.cut
# @TEST-EXEC: btest-diff notice.cut

redef TLSBridge::marker_macs = {"0a:00:00:00:00:99"};

event zeek_init()
	{
	Analyzer::register_for_ports(Analyzer::ANALYZER_HTTP, set(8443/tcp, 8444/tcp));
	}
