# @TEST-DOC: Flow log lines as the bridge writes them: IPv6 endpoints, a rewritten server port, a full key origin, null fields, a connection that was not decrypted, bad endpoints, and lines that are no flow records.  Read once, without a trace.
#
# @TEST-EXEC: cp $TRACES/flow-log-samples.jsonl flows.jsonl
# @TEST-EXEC: zeek -b $PACKAGE %INPUT >output 2>stderr
# @TEST-EXEC: btest-diff output
# @TEST-EXEC: zeek-cut flow_id uid orig_h orig_p resp_h resp_p synthetic_resp_p status reason version cipher sni alpn resumed origin_host origin_vm origin_pid origin_comm origin_trigger c2s_bytes s2c_bytes <tls_bridge.log >tls_bridge.cut
# @TEST-EXEC: btest-diff tls_bridge.cut
# @TEST-EXEC: grep -q "bad synthetic endpoints 10.0.0.1:1 -> nonsense" stderr

redef TLSBridge::flow_log = "flows.jsonl";
redef TLSBridge::follow_flow_log = F;
redef exit_only_after_terminate = T;

event TLSBridge::flow_log_read(path: string)
	{
	print fmt("read %s: %d lines were no flow records", path,
	    TLSBridge::parse_failures);
	terminate();
	}
