"""What the tests and the benchmark share: a streaming hot standby (``standby``), the read models'
oracle (``oracle``), free ports and stopping processes (``processes``), plain connections
(``database``). A dev tool like ``bench``: neither the wheel nor the image ships it, and the service
never imports it."""
