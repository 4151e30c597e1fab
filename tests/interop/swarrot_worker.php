<?php
// A PHP worker behaving as swarrot 4 does with php-amqplib and SwarrotBundle's recommended stack
// (exception_catcher -> ack -> retry -> callback), for swarrow's interop tests (tests/interop/). Each piece follows
// swarrot's own code, as read in its source:
// - provider (PhpAmqpLibMessageProvider): basic.get; the properties present are copied, delivery info included;
//   headers unwrapped from `application_headers` one level: an AMQP array becomes a PHP array, a nested table
//   stays an AMQPTable object, scalars stay as read;
// - retry (RetryProcessor): attempts = headers.swarrot_retry_attempts (0 if absent) + 1; past --attempts it
//   re-throws; else a copy with every property and the header set to attempts is published with routing key
//   `<queue>_retry_<attempt>` (pattern `%queue%_retry_%attempt%`), and the original counts as done;
// - publisher (PhpAmqpLibMessagePublisher, exchange `retry`): every header is re-typed by PHP type, array as
//   'A', int as 'I' (32-bit), anything else as 'S' (string); with --confirms, waits for the broker's ack;
// - ack (AckProcessor): acks after the inner processor; on any Throwable, nack without requeue (RabbitMQ
//   dead-letters it through `dl` into `<queue>_dl`) and re-throw;
// - exception catcher: logs the Throwable and goes on with the next message.
// Each callback call appends "php <id> <retries seen> ok|fail" to --out; a publish that PHP could not make appends
// "php-error <id> <class>" (the message went to the dead letters instead of being retried).
//
//   php swarrot_worker.php --queue Q --out FILE [--port 5672] [--attempts 3] [--max-messages N] [--idle-seconds 3]
//                          [--fail-all] [--confirms]
//
// The body is JSON {"id": ..., "fail": K}: the callback fails while the retries seen are fewer than K ("always": every
// time; --fail-all: every message, a PHP worker with a bug). "Retries seen" is the larger attempt header, so the
// rule is the same in both languages.
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPArray;

$opts = getopt('', ['queue:', 'out:', 'port:', 'attempts:', 'max-messages:', 'idle-seconds:', 'fail-all', 'confirms']);
$failAll = isset($opts['fail-all']);
$queue = $opts['queue'];
$out = fopen($opts['out'], 'a');
$maxAttempts = (int) ($opts['attempts'] ?? 3);
$maxMessages = (int) ($opts['max-messages'] ?? 0);
$idleSeconds = (float) ($opts['idle-seconds'] ?? 3);
$confirms = isset($opts['confirms']);

$connection = new AMQPStreamConnection('127.0.0.1', (int) ($opts['port'] ?? 5672), 'guest', 'guest');
$channel = $connection->channel();
if ($confirms) {
    $channel->confirm_select();
}

/** swarrot's provider: [body, properties with 'headers', delivery tag] or null. */
function get_message($channel, string $queue): ?array {
    $envelope = $channel->basic_get($queue);
    if ($envelope === null) {
        return null;
    }
    $properties = [];
    $keys = ['content_type', 'delivery_mode', 'content_encoding', 'type', 'timestamp', 'priority', 'expiration',
        'app_id', 'message_id', 'reply_to', 'correlation_id', 'user_id', 'cluster_id', 'channel', 'consumer_tag',
        'delivery_tag', 'redelivered', 'exchange', 'routing_key'];
    foreach ($keys as $key) {
        if ($envelope->has($key)) {
            $properties[$key] = $envelope->get($key);
        }
    }
    $properties['headers'] = [];
    if ($envelope->has('application_headers')) {
        foreach ($envelope->get('application_headers') as $key => $value) {
            $properties['headers'][$key] = $value[1] instanceof AMQPArray ? $value[1]->getNativeData() : $value[1];
        }
    }
    return [$envelope->getBody(), $properties, $envelope->getDeliveryTag()];
}

/** swarrot's php-amqplib publisher: headers re-typed A / I / S, other keys kept if they are AMQP properties. */
function publish($channel, string $body, array $properties, string $exchange, string $key, bool $confirms): void {
    if (isset($properties['headers'])) {
        if (!isset($properties['application_headers'])) {
            $properties['application_headers'] = [];
        }
        foreach ($properties['headers'] as $header => $value) {
            $type = is_array($value) ? 'A' : (is_int($value) ? 'I' : 'S');
            $properties['application_headers'][$header] = [$type, $value];
        }
    }
    $channel->basic_publish(new AMQPMessage($body, $properties), $exchange, $key);
    if ($confirms) {
        $channel->wait_for_pending_acks(10);
    }
}

function callback(string $body, array $properties, $out, bool $failAll): void {
    $headers = $properties['headers'];
    $seen = max((int) ($headers['swarrot_retry_attempts'] ?? 0), (int) ($headers['x-swarrow-attempt'] ?? 0));
    $job = json_decode($body, true);
    $fail = $failAll || $job['fail'] === 'always' || $seen < (int) $job['fail'];
    fwrite($out, sprintf("php %s %d %s\n", $job['id'], $seen, $fail ? 'fail' : 'ok'));
    fflush($out);
    if ($fail) {
        throw new RuntimeException('php says no to ' . $job['id']);
    }
}

function retry(string $body, array $properties, $channel, string $queue, int $max, $out, bool $failAll, bool $confirms): void {
    try {
        callback($body, $properties, $out, $failAll);
    } catch (Throwable $e) {
        $attempts = ($properties['headers']['swarrot_retry_attempts'] ?? 0) + 1;
        if ($attempts > $max) {
            throw $e;
        }
        $properties['headers']['swarrot_retry_attempts'] = $attempts;
        try {
            publish($channel, $body, $properties, 'retry', sprintf('%s_retry_%d', $queue, $attempts), $confirms);
        } catch (Throwable $publishError) {
            fwrite($out, sprintf("php-error %s %s\n", json_decode($body, true)['id'], get_class($publishError)));
            fflush($out);
            throw $publishError;
        }
    }
}

$processed = 0;
$idleSince = microtime(true);
while ($maxMessages === 0 || $processed < $maxMessages) {
    $message = get_message($channel, $queue);
    if ($message === null) {
        if (microtime(true) - $idleSince > $idleSeconds) {
            break;
        }
        usleep(50000);
        continue;
    }
    $idleSince = microtime(true);
    [$body, $properties, $tag] = $message;
    try {  // exception catcher
        try {  // ack
            retry($body, $properties, $channel, $queue, $maxAttempts, $out, $failAll, $confirms);
            $channel->basic_ack($tag);
        } catch (Throwable $e) {
            $channel->basic_nack($tag, false, false);
            throw $e;
        }
    } catch (Throwable $e) {
        // logged and swallowed: the worker goes on
    }
    $processed++;
}
$channel->close();
$connection->close();
