# @TEST-DOC: A followed flow log (live): records that ended longer ago than max_flow_age are skipped, counted and reported once; a record the bridge appends later is read and logged.
#
# @TEST-EXEC: cp $TRACES/flow-log-samples.jsonl flows.jsonl
# @TEST-EXEC: zeek -b $PACKAGE %INPUT >output 2>stderr
# @TEST-EXEC: btest-diff output
# @TEST-EXEC: zeek-cut flow_id orig_h orig_p status version sni <tls_bridge.log >tls_bridge.cut
# @TEST-EXEC: btest-diff tls_bridge.cut
# @TEST-EXEC: grep -q "skipping flow records older than max_flow_age (10.0 mins), from flow 7 on" stderr

redef TLSBridge::flow_log = "flows.jsonl";
redef exit_only_after_terminate = T;

global appended = F;

event finish()
	{
	print fmt("%d old flow records skipped, %d lines were no flow records",
	    TLSBridge::old_flows_skipped, TLSBridge::parse_failures);
	terminate();
	}

event append()
	{
	# The bridge appends a record of a connection that just ended.
	local now = time_to_double(current_time());
	local line = fmt("{\"flow_id\": 11, \"ts_start\": %.6f, \"ts_end\": %.6f, \"client\": \"192.0.2.9:41000\", \"server\": \"198.51.100.2:443\", \"status\": \"decrypted\", \"tls_version\": \"TLSv1.3\", \"sni\": \"new.example.test\", \"synthetic\": null}",
	    now - 1.0, now);
	system(fmt("printf '%%s\\n' %s >>flows.jsonl", safe_shell_quote(line)));
	appended = T;
	}

event zeek_init()
	{
	schedule 1sec { append() };
	}

hook TLSBridge::log_policy(rec: TLSBridge::Info, id: Log::ID,
    filter: Log::Filter)
	{
	if ( appended && rec?$flow_id && rec$flow_id == 11 )
		schedule 0.2sec { finish() };
	}
