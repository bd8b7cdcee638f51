"""The store world: a TidbCluster's TiKV and PD series as a pure model (``model``), the HTTP server that serves it
(``simulator``) and the scrape configuration that finds it (``scrapeconfig``). It never imports the operator."""
