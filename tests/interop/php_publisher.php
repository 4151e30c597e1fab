<?php
// Publishes messages the way a PHP producer of a swarrot shop does (php-amqplib's defaults, JSON bodies, headers as
// AMQP tables with nested arrays), for swarrow's interop tests.
//
//   php php_publisher.php --queue Q --count N [--port 5672] [--fail-every 10] [--always-every 50]
//                         [--headers nested|flat|none] [--no-content-type] [--id-prefix php-]
//
// Message i (1-based) has id "php-<i>" and the body {"id": ..., "fail": K}: K is "always" every --always-every
// messages, 1 every --fail-every messages, else 0. --headers: `nested` (default) adds a table inside a table, which
// swarrot's own PHP publisher cannot send again (see swarrot_worker.php); `flat` only strings, ints, a bool and an
// array; `none` no headers. --no-content-type leaves content_type unset, as many PHP producers do.
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

$opts = getopt('', ['queue:', 'count:', 'port:', 'fail-every:', 'always-every:', 'headers:', 'no-content-type', 'id-prefix:']);
$prefix = $opts['id-prefix'] ?? 'php-';
$headers = $opts['headers'] ?? 'nested';
$failEvery = (int) ($opts['fail-every'] ?? 0);
$alwaysEvery = (int) ($opts['always-every'] ?? 0);
$connection = new AMQPStreamConnection('127.0.0.1', (int) ($opts['port'] ?? 5672), 'guest', 'guest');
$channel = $connection->channel();
$channel->confirm_select();
for ($i = 1; $i <= (int) $opts['count']; $i++) {
    $fail = ($alwaysEvery && $i % $alwaysEvery === 0) ? 'always' : (($failEvery && $i % $failEvery === 0) ? 1 : 0);
    $properties = ['delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT, 'message_id' => "$prefix$i"];
    if (!isset($opts['no-content-type'])) {
        $properties['content_type'] = 'application/json';
    }
    if ($headers === 'nested') {
        $properties['application_headers'] = new AMQPTable([
            'origin' => 'php',
            'tags' => ['billing', 'eu'],
            'meta' => ['attempt_budget' => 3, 'nested' => ['deep' => true]],
        ]);
    } elseif ($headers === 'flat') {
        $properties['application_headers'] = new AMQPTable([
            'origin' => 'php', 'tenant' => 42, 'urgent' => true, 'tags' => ['billing', 'eu'],
        ]);
    }
    $message = new AMQPMessage(json_encode(['id' => "$prefix$i", 'fail' => $fail]), $properties);
    $channel->basic_publish($message, '', $opts['queue']);
}
$channel->wait_for_pending_acks(30);
$channel->close();
$connection->close();
