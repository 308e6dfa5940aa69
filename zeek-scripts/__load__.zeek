@load ./main
@load ./logs
@load ./notices
