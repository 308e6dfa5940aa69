"""Where secrets come from on the sensor side: key log files (:mod:`~bridge.keys.keylog`,
followed live by :mod:`~bridge.keys.follow`) and the key feed (:mod:`bridge.keyfeed`)
fill the :class:`~bridge.keys.store.KeyStore`, which the engine reads."""
