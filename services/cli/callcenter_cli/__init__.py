"""`callcenter`: the command line of callcenter, a client of the HTTP api only."""
