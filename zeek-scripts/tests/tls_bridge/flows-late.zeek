# @TEST-DOC: Live order: flow records arrive after their synthetic connections started.  The first connection is annotated from its second request on; the second connection's record arrives after its conn.log line was written and still gets its uid in tls_bridge.log.
#
# @TEST-EXEC: cp $TRACES/tls-bridge-http.flows.jsonl flows.jsonl
# @TEST-EXEC: zeek -b -r $TRACES/tls-bridge-http.pcap $PACKAGE %INPUT >output
# @TEST-EXEC: btest-diff output
#
# @TEST-EXEC: zeek-cut flow_id orig_p resp_p synthetic_resp_p status version sni <tls_bridge.log >tls_bridge.cut
# @TEST-EXEC: btest-diff tls_bridge.cut
#
# @TEST-EXEC: zeek-cut id.orig_p id.resp_p tls_bridge_flow_id tls_bridge_version tls_bridge_origin <conn.log | sort >conn.cut
# @TEST-EXEC: btest-diff conn.cut
#
# @TEST-EXEC: zeek-cut id.orig_p uri tls_bridge_flow_id tls_bridge_version <http.log >http.cut
# @TEST-EXEC: btest-diff http.cut
#
# @TEST-EXEC: zeek-cut uid id.orig_p id.resp_p <conn.log | sort >conn.uids
# @TEST-EXEC: zeek-cut uid orig_p synthetic_resp_p <tls_bridge.log | sort >tls_bridge.uids
# @TEST-EXEC: diff conn.uids tls_bridge.uids

# The package reads no flow log here: this script holds the records back and
# hands them to TLSBridge::add_flow at chosen moments.

type Line: record {
	s: string;
};

# Flow records by their synthetic client, "ip:port".
global held: table[string] of TLSBridge::Flow;

function client_of(c: connection): string
	{
	return fmt("%s:%d", c$id$orig_h, port_to_count(c$id$orig_p));
	}

function hand_over(c: connection, moment: string)
	{
	local client = client_of(c);
	if ( client !in held )
		return;

	print fmt("%s: flow %d for %s", moment, held[client]$flow_id, client);
	TLSBridge::add_flow(held[client]);
	delete held[client];
	}

event hold_line(desc: Input::EventDescription, tpe: Input::Event, s: string)
	{
	local f = TLSBridge::parse_flow(s);
	held[f$synthetic$client] = f;
	}

event Input::end_of_data(name: string, source: string)
	{
	if ( name == "held-flows" )
		continue_processing();
	}

event zeek_init()
	{
	Analyzer::register_for_ports(Analyzer::ANALYZER_HTTP, set(8443/tcp, 8444/tcp));
	suspend_processing();
	Input::add_event(Input::EventDescription($source="flows.jsonl",
	    $reader=Input::READER_RAW, $mode=Input::MANUAL, $name="held-flows",
	    $fields=Line, $ev=hold_line, $want_record=F));
	}

# First connection: its record arrives with the second request.
event http_request(c: connection, method: string, original_URI: string,
    unescaped_URI: string, version: string)
	{
	if ( /password=/ in original_URI )
		hand_over(c, "second request");
	}

# Second connection: its record arrives after conn.log was written (-5).
event connection_state_remove(c: connection) &priority=-10
	{
	hand_over(c, "connection logged");
	}

event TLSBridge::bridged_connection(c: connection, facts: TLSBridge::Facts)
	{
	print fmt("%s is flow %d: %s", client_of(c), facts$flow_id, facts$version);
	}
